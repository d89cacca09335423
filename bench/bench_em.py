#!/usr/bin/env python
"""Benchmark gmmfast's EM against the NumPy reference, scikit-learn, torch and the peers
(mlpack, OpenCV, pomegranate, torchgmm) on the CPU.

    python bench/bench_em.py                     # all cases, full sizes
    python bench/bench_em.py --quick             # the same cases, N/20 (well under a minute)
    python bench/bench_em.py --cases full64,diag64 --threads 8 --repeat 5 --json out.json

Prints markdown tables (one EM iteration, full fit, extra memory, the issue's targets)
on stdout and progress on stderr. See bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# cases.py imports gmmfast/NumPy, so the case names are listed here to keep --help and
# argument checking free of those imports (see main() for why that matters)
CASE_NAMES = ("full64", "full32", "diag64", "tied64", "spherical64", "largek64")


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _case_list(text: str) -> list:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in CASE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(CASE_NAMES)}"
        )
    return names


IMPL_NAMES = ("gmmfast", "numpy-ref", "sklearn", "torch")


def _impl_list(text: str) -> list:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in IMPL_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(IMPL_NAMES)}"
        )
    return sorted(set(names) | {"gmmfast"}, key=IMPL_NAMES.index)


PEER_NAMES = ("mlpack", "opencv", "pomegranate", "torchgmm")


def _peer_list(text: str) -> list:
    """--peers: names from PEER_NAMES, or 'none' (an empty list: no peer comparison)."""
    if text.strip() == "none":
        return []
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in PEER_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(PEER_NAMES)} or 'none'"
        )
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time one EM iteration and a full fit: gmmfast vs NumPy reference, "
        "scikit-learn and torch, on the same data in one process.",
    )
    p.add_argument("--quick", action="store_true", help="the same cases with N/20")
    p.add_argument("--json", metavar="PATH", help="also write every number and machine info here")
    p.add_argument(
        "--cases",
        type=_case_list,
        default=list(CASE_NAMES),
        metavar="NAME,...",
        help=f"comma-separated subset of {', '.join(CASE_NAMES)} (default: all)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=_usable_cores(),
        help="threads for every library (default: usable cores, %(default)s here)",
    )
    p.add_argument(
        "--repeat", type=_positive_int, default=3,
        help="timed repetitions per iteration, best kept (default %(default)s)",
    )
    p.add_argument(
        "--fit-repeat", type=_positive_int, default=2,
        help="complete fits per library and case, the fastest kept; every time is "
        "recorded (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="data seed (default %(default)s)")
    p.add_argument(
        "--only",
        type=_impl_list,
        default=None,
        metavar="NAME,...",
        help=f"time only these implementations (gmmfast always runs): {', '.join(IMPL_NAMES)}",
    )
    p.add_argument(
        "--peers",
        type=_peer_list,
        default=None,
        metavar="NAME,...|none",
        help=f"other libraries to compare, from {', '.join(PEER_NAMES)} (default: all of "
        "them that are installed; an uninstalled one is skipped with a note)",
    )
    p.add_argument(
        "--peer-iters", type=_positive_int, default=10,
        help="EM iterations of the fixed-iteration comparison with the peers "
        "(default %(default)s)",
    )
    p.add_argument(
        "--peer-budget", type=float, default=60.0, metavar="SECONDS",
        help="a peer whose fixed-iteration run would take longer runs it once, with "
        "fewer iterations (at least 2), and says so (default %(default)s)",
    )
    p.add_argument("--no-fit", action="store_true", help="skip the full fits")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--no-torch-fit", action="store_true", help="skip torch's EM fit")
    p.add_argument(
        "--ref-fit-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip the NumPy reference's EM fit when it would take longer (estimated from "
        "its iteration time; default 60, 2 with --quick; 0 = never run it)",
    )
    p.add_argument(
        "--ref-memory-limit",
        type=float,
        default=4.0,
        metavar="GB",
        help="skip the NumPy reference when its temporaries would exceed this "
        "(default %(default)s)",
    )
    args = p.parse_args(argv)
    if args.ref_fit_budget is None:
        args.ref_fit_budget = 2.0 if args.quick else 60.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    # Thread counts must be in the environment before NumPy, scikit-learn or torch load
    # their BLAS/OpenMP runtimes (and the memory-probe children inherit them), so the
    # heavy modules are imported only after this.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import harness
    import report

    results = harness.run(args)
    print(report.render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=_json_default)
            f.write("\n")
        harness.log(f"wrote {args.json}")
    return 0


def _json_default(obj):
    """NumPy scalars/arrays and tuples from the results."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    sys.exit(main())
