#!/usr/bin/env python
"""GPU benchmark: one EM iteration of gmmfast's CUDA kernels vs a careful pure-torch EM
and scikit-learn's GaussianMixture with array-API dispatch, on the same data and GPU.

    python bench/bench_gpu.py                  # the three cases, N = 1,000,000
    python bench/bench_gpu.py --quick          # N = 20,000: a smoke run (seconds)
    python bench/bench_gpu.py --json out.json  # also write every number and the device
    python bench/bench_gpu.py --cases full64   # a subset

Per case, in one process on the same X (float32, generated on the GPU):
  - gmmfast: ms per EM iteration = gmmfast.torch em_stats + finalize (+ casting the new
    parameters back to float32), timed with CUDA events over --repeat iterations after
    --warmup iterations;
  - torch:   bench/torch_em.py's em_iteration (scikit-learn's formulas, batched matmuls,
    logsumexp; the N x K responsibilities kept whole), same timing;
  - sklearn: GaussianMixture(init_params='random_from_data') with
    sklearn.set_config(array_api_dispatch=True) on the CUDA tensors: one _e_step +
    _m_step pair (what fit() repeats), same timing; skipped with the reason printed when
    scikit-learn cannot run it;
  - fraction of the GPU's FP32 FMA peak (SMs x FP32 lanes per SM x 2 x max SM clock),
    with the flop convention 4·N·K·D² (full) and 8·N·K·D (diag) per iteration;
  - peak GPU memory of a gmmfast iteration (torch.cuda.max_memory_allocated after a reset,
    X included) vs the size of X.
All three start from the same parameters (a few gmmfast EM iterations from means drawn
from the data). Targets (printed as pass/fail): gmmfast >= 5x pure torch and >= 20x
scikit-learn-on-GPU per iteration and >= 40% of FP32 FMA peak (full case); peak memory
<= 2x the size of X (every case).

Exits 0 with a message when there is no CUDA device or gmmfast was built without CUDA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

# scikit-learn's array-API dispatch needs SciPy's array-API mode, set before SciPy loads.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

CASES = {
    # name: (covariance_type, N, D, K)
    "full64": ("full", 1_000_000, 64, 64),
    "diag16": ("diag", 1_000_000, 16, 256),
    "diag128": ("diag", 1_000_000, 128, 1024),
}
QUICK_N = 20_000
REG_COVAR = 1e-6
TARGETS = {"vs_torch": 5.0, "vs_sklearn": 20.0, "peak_fraction": 0.40, "memory_ratio": 2.0}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"N = {QUICK_N:,} instead of 1,000,000")
    p.add_argument("--json", metavar="PATH", help="write all numbers and the device here")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--repeat", type=int, default=None, help="timed iterations per implementation (default 10, quick 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    p.add_argument("--no-torch", action="store_true", help="skip the pure-torch EM")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if args.repeat is None:
        args.repeat = 3 if args.quick else 10
    return args


# ------------------------------------------------------------------------------ device


def fp32_lanes_per_sm(major, minor):
    """FP32 FMA lanes per SM: 64 on sm_80 (A100) and sm_60/70; 128 on sm_86/89/90 and
    the Blackwell parts (sm_100/120)."""
    if (major, minor) in ((8, 0), (7, 0), (7, 5), (6, 0)):
        return 64
    return 128


def max_sm_clock_mhz(index):
    """The GPU's maximum SM clock (MHz): nvidia-smi, else pynvml, else None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30,
        )
        if out.returncode == 0 and out.stdout.strip():
            return float(out.stdout.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return float(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM))
    except Exception:  # pynvml missing or failing: peak unknown
        return None


def device_info(torch, device):
    props = torch.cuda.get_device_properties(device)
    clock = max_sm_clock_mhz(device.index or 0)
    lanes = fp32_lanes_per_sm(props.major, props.minor)
    peak = props.multi_processor_count * lanes * 2 * clock * 1e6 if clock else None
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "fp32_lanes_per_sm": lanes,
        "max_sm_clock_mhz": clock,
        "fp32_fma_peak_flops": peak,
        "total_memory_bytes": props.total_memory,
        "torch": torch.__version__,
        "cuda_runtime_torch": torch.version.cuda,
    }


# ------------------------------------------------------------------------------ timing


def time_iterations(torch, step, state, warmup, repeat):
    """ms per call of state = step(state): CUDA events around `repeat` calls after
    `warmup` untimed ones; returns (ms, state)."""
    for _ in range(warmup):
        state = step(state)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        state = step(state)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat, state


# ------------------------------------------------------------------------------ data


def make_data(torch, cov, N, D, K, device, seed=0):
    """X (N, D) float32 from a random mixture, generated on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = 4.0 * torch.randn(K, D, generator=g, device=device)
    scales = 0.5 + torch.rand(K, D, generator=g, device=device)
    comp = torch.randint(K, (N,), generator=g, device=device)
    X = torch.randn(N, D, generator=g, device=device)
    if cov == "full":  # correlated features: a random lower-triangular mixing per component
        mix = torch.tril(0.2 * torch.randn(K, D, D, generator=g, device=device), -1)
        mix = mix + torch.diag_embed(scales)
        for k0 in range(0, N, 16384):  # bounded temporaries (16384 x D x D)
            sl = slice(k0, min(N, k0 + 16384))
            X[sl] = torch.einsum("nde,ne->nd", mix[comp[sl]], X[sl])
    else:
        X *= scales[comp]
    X += centres[comp]
    return X.contiguous()


def initial_params(torch, gt, X, cov, K, seed=1):
    """Means drawn from the data, unit covariances, uniform weights; then 2 gmmfast EM
    iterations so that every implementation starts from the same sensible mixture."""
    N, D = X.shape
    g = torch.Generator(device=X.device).manual_seed(seed)
    idx = torch.randperm(N, generator=g, device=X.device)[:K]
    means = X[idx].clone()
    lw = torch.full((K,), -math.log(K), device=X.device)
    U = torch.eye(D, device=X.device).repeat(K, 1, 1) if cov == "full" else torch.ones(K, D, device=X.device)
    state = (lw, means, U)
    for _ in range(2):
        state = gmmfast_step(torch, gt, X, cov)(state)
    return state


def gmmfast_step(torch, gt, X, cov):
    def step(state):
        lw, mu, U = state
        st = gt.em_stats(X, lw, mu, U, cov)
        fin = gt.finalize(st, REG_COVAR, torch.float32)
        return (fin.weights.log().float(), fin.means.float(), fin.precisions_cholesky.float())

    return step


# ------------------------------------------------------------------------------ implementations


def run_gmmfast(torch, gt, X, cov, state, args):
    ms, _ = time_iterations(torch, gmmfast_step(torch, gt, X, cov), state, args.warmup, args.repeat)
    # peak memory of one iteration, X (and the parameters) included
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(X.device)
    before = torch.cuda.memory_allocated(X.device)
    gmmfast_step(torch, gt, X, cov)(state)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(X.device)
    # the mean log-likelihood of `state`, for the cross-check with torch
    st = gt.em_stats(X, *state, cov)
    lower_bound = (st.log_likelihood / st.weight_sum).item()
    return {"ms_per_iter": ms, "peak_bytes": peak, "allocated_before_bytes": before, "lower_bound": lower_bound}


def run_torch(torch, X, cov, state, args):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_em

    lw, mu, U = state
    # the same mixture as gmmfast's state, in torch_em's parameterisation
    cov_mats = torch.linalg.inv(U @ U.mT) if cov == "full" else 1.0 / (U * U)
    params = torch_em.GMMParams(cov, lw.exp(), mu.clone(), cov_mats, U.clone())
    lower_bound, _ = torch_em.em_iteration(X, params, REG_COVAR)

    def step(p):
        return torch_em.em_iteration(X, p, REG_COVAR)[1]

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(X.device)
    ms, _ = time_iterations(torch, step, params, args.warmup, args.repeat)
    return {"ms_per_iter": ms, "peak_bytes": torch.cuda.max_memory_allocated(X.device),
            "lower_bound": float(lower_bound)}


def run_sklearn(torch, X, cov, state, args):
    import sklearn
    from sklearn.mixture import GaussianMixture

    lw, mu, U = state
    K = mu.shape[0]
    with sklearn.config_context(array_api_dispatch=True):
        gm = GaussianMixture(n_components=K, covariance_type=cov, init_params="random_from_data",
                             reg_covar=REG_COVAR, tol=0.0, max_iter=1, random_state=0)
        # The fitted state fit() would hold after initialisation, set to the shared mixture.
        gm.weights_ = lw.exp()
        gm.means_ = mu.clone()
        gm.precisions_cholesky_ = U.clone()
        gm.covariances_ = torch.linalg.inv(U @ U.mT) if cov == "full" else 1.0 / (U * U)
        gm.converged_, gm.n_iter_, gm.lower_bound_ = False, 0, -math.inf

        def step(_):
            _, log_resp = gm._e_step(X)
            gm._m_step(X, log_resp)
            return None

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(X.device)
        ms, _ = time_iterations(torch, step, None, 1, max(1, min(args.repeat, 3)))
    return {"ms_per_iter": ms, "peak_bytes": torch.cuda.max_memory_allocated(X.device),
            "sklearn": sklearn.__version__}


# ------------------------------------------------------------------------------ main


def flops_per_iter(cov, N, D, K):
    return 4.0 * N * K * D * D if cov == "full" else 8.0 * N * K * D


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("no CUDA device: PyTorch is not installed; nothing to benchmark")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False; nothing to benchmark")
        return 0
    import gmmfast

    if not gmmfast.cuda_available():
        print("no CUDA device usable by gmmfast: it was built without its CUDA kernels "
              "(gmmfast.build_info()['cuda_compiled'] is False) or sees no device; nothing to benchmark")
        return 0
    import gmmfast.torch as gt

    device = torch.device("cuda", torch.cuda.current_device())
    info = device_info(torch, device)
    log(f"device: {info['name']} (sm_{info['compute_capability'].replace('.', '')}, {info['sm_count']} SMs, "
        f"max SM clock {info['max_sm_clock_mhz']} MHz, FP32 FMA peak "
        f"{info['fp32_fma_peak_flops'] / 1e12 if info['fp32_fma_peak_flops'] else float('nan'):.1f} TFLOP/s)")
    results = {"device": info, "quick": args.quick, "repeat": args.repeat, "warmup": args.warmup,
               "targets": TARGETS, "cases": {}}

    for name in args.cases:
        cov, N, D, K = CASES[name]
        if args.quick:
            N = QUICK_N
        log(f"\n== {name}: {cov} float32 N={N:,} D={D} K={K}")
        t0 = time.perf_counter()
        X = make_data(torch, cov, N, D, K, device)
        state = initial_params(torch, gt, X, cov, K)
        torch.cuda.synchronize()
        log(f"data + init: {time.perf_counter() - t0:.1f} s")
        x_bytes = X.numel() * X.element_size()
        case = {"covariance_type": cov, "N": N, "D": D, "K": K, "dtype": "float32", "x_bytes": x_bytes,
                "flops_per_iter": flops_per_iter(cov, N, D, K)}

        case["gmmfast"] = g = run_gmmfast(torch, gt, X, cov, state, args)
        log(f"gmmfast: {g['ms_per_iter']:.2f} ms/iter, peak memory {g['peak_bytes'] / x_bytes:.2f} x size of X")
        if info["fp32_fma_peak_flops"]:
            case["peak_fraction"] = case["flops_per_iter"] / (g["ms_per_iter"] * 1e-3) / info["fp32_fma_peak_flops"]
        case["memory_ratio"] = g["peak_bytes"] / x_bytes

        for impl, runner, skip in (("torch", run_torch, args.no_torch), ("sklearn", run_sklearn, args.no_sklearn)):
            if skip:
                case[impl] = {"skipped": "disabled on the command line"}
                continue
            try:
                r = runner(torch, X, cov, state, args)
                r["speedup"] = r["ms_per_iter"] / g["ms_per_iter"]
                case[impl] = r
                log(f"{impl}: {r['ms_per_iter']:.2f} ms/iter -> gmmfast is {r['speedup']:.1f}x faster")
            except Exception as exc:  # report and go on: a baseline may not support the case
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                case[impl] = {"skipped": reason}
                log(f"{impl}: skipped ({reason})")
            finally:
                torch.cuda.empty_cache()
        if "lower_bound" in case.get("torch", {}):
            lb_g, lb_t = g["lower_bound"], case["torch"]["lower_bound"]
            case["lower_bound_rel_diff"] = abs(lb_g - lb_t) / max(1.0, abs(lb_t))
        results["cases"][name] = case
        del X, state
        torch.cuda.empty_cache()

    print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        log(f"wrote {args.json}")
    return 0


def _fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def report(results):
    lines = [f"# gmmfast GPU benchmark on {results['device']['name']}" + (" (quick)" if results["quick"] else ""), ""]
    lines.append("| case | gmmfast ms/iter | torch ms/iter | sklearn ms/iter | vs torch | vs sklearn | "
                 "% FP32 peak | peak mem / X | lower bound diff |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for name, c in results["cases"].items():
        t, s = c.get("torch", {}), c.get("sklearn", {})
        lines.append(
            f"| {name} | {_fmt(c['gmmfast']['ms_per_iter'])} | {_fmt(t.get('ms_per_iter'))} | "
            f"{_fmt(s.get('ms_per_iter'))} | {_fmt(t.get('speedup'), '.1f')} | {_fmt(s.get('speedup'), '.1f')} | "
            f"{_fmt(100 * c['peak_fraction'] if 'peak_fraction' in c else None, '.1f')} | "
            f"{_fmt(c['memory_ratio'])} | {_fmt(c.get('lower_bound_rel_diff'), '.1e')} |"
        )
    lines += ["", "## Targets", ""]
    T = results["targets"]

    def verdict(value, target, higher=True):
        if value is None:
            return "n/a (not measured)"
        ok = value >= target if higher else value <= target
        return ("PASS" if ok else "FAIL") + f" ({value:.2f} vs {'>=' if higher else '<='} {target})"

    for name, c in results["cases"].items():
        if c["covariance_type"] == "full":
            lines.append(f"- {name}: >= {T['vs_torch']}x pure torch: {verdict(c.get('torch', {}).get('speedup'), T['vs_torch'])}")
            lines.append(f"- {name}: >= {T['vs_sklearn']}x scikit-learn on GPU: "
                         f"{verdict(c.get('sklearn', {}).get('speedup'), T['vs_sklearn'])}")
            lines.append(f"- {name}: >= {100 * T['peak_fraction']:.0f}% of FP32 FMA peak: "
                         f"{verdict(c.get('peak_fraction'), T['peak_fraction'])}")
        lines.append(f"- {name}: peak memory <= {T['memory_ratio']}x size of X: "
                     f"{verdict(c['memory_ratio'], T['memory_ratio'], higher=False)}")
    for name, c in results["cases"].items():
        for impl in ("torch", "sklearn"):
            if "skipped" in c.get(impl, {}):
                lines.append(f"- {name}: {impl} skipped: {c[impl]['skipped']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
