#!/usr/bin/env python
"""Compare two builds of gmmfast with bench/bench_em.py, in one run on one machine.

    python bench/compare_builds.py --before /path/to/old-venv/bin/python \\
        --after /path/to/new-venv/bin/python --rounds 3 --json out.json [-- bench_em args]

Each interpreter must have its build of gmmfast installed; both run this checkout's
bench/bench_em.py (gmmfast only: ``--only gmmfast --peers none --no-memory`` unless given), so only
gmmfast differs. The rounds alternate the order (before, after, after, before, ...) so
that a drift in the machine's load hits both builds alike; every timing is the best of
its rounds. Prints a markdown table of gmmfast's times (one EM iteration, the complete
fit, EM from a shared start) and the after/before ratios, and writes every run's
numbers, the machine and both builds' build_info to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_bench(python: str, extra: list, tmpdir: str, tag: str) -> dict:
    out = os.path.join(tmpdir, f"{tag}.json")
    cmd = [python, os.path.join(HERE, "bench_em.py"), "--json", out, *extra]
    print(f"[compare] {tag}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def timings(result: dict) -> dict:
    """{case: {"iteration_ms", "fit_s", "fit_em_s", "n_iter"}} of gmmfast's rows."""
    out = {}
    for case in result["cases"]:
        row = {}
        it = case["iteration"].get("gmmfast", {})
        if "ms" in it:
            row["iteration_ms"] = it["ms"]
        for key, name in (("gmmfast", "fit_s"), ("gmmfast EM", "fit_em_s")):
            fit = case["fit"].get(key, {})
            if "seconds" in fit:
                row[name] = fit["seconds"]
                row[name.replace("_s", "_n_iter")] = fit["n_iter"]
                row[name.replace("_s", "_lower_bound")] = fit["lower_bound"]
        out[case["name"]] = row
    return out


def best(runs: list) -> dict:
    cases = {}
    for run in runs:
        for case, row in timings(run).items():
            agg = cases.setdefault(case, {})
            for key, value in row.items():
                if key.endswith(("_ms", "_s")):
                    agg[key] = min(agg.get(key, float("inf")), value)
                else:
                    agg[key] = value
    return cases


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, metavar="PYTHON", help="interpreter with the old build")
    p.add_argument("--after", required=True, metavar="PYTHON", help="interpreter with the new build")
    p.add_argument("--rounds", type=int, default=3, help="runs of each build (default %(default)s)")
    p.add_argument("--json", metavar="PATH", help="write every number here")
    p.add_argument("bench_args", nargs="*", help="arguments for bench_em.py (after --)")
    args = p.parse_args(argv)
    extra = list(args.bench_args) or ["--only", "gmmfast", "--peers", "none", "--no-memory"]
    labels = {"before": args.before, "after": args.after}
    runs = {"before": [], "after": []}
    build_info = {}
    with tempfile.TemporaryDirectory(prefix="gmmfast-compare-") as tmpdir:
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for label in order:
                runs[label].append(run_bench(labels[label], extra, tmpdir, f"{label}-{r}"))
    for label in runs:
        build_info[label] = runs[label][0]["machine"].get("gmmfast_build_info")
    b, a = best(runs["before"]), best(runs["after"])
    lines = [
        f"machine: {runs['after'][0]['machine'].get('cpu')}, "
        f"ISA {build_info['after'].get('isa')}, {runs['after'][0]['settings']['threads']} threads; "
        f"best of {args.rounds} alternating runs per build; bench_em.py {' '.join(extra)}",
        "",
        "| case | iteration ms before | after | ratio | fit s before | after | ratio | EM from start s before | after | ratio | same result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    comparison = {}
    for case in b:
        rb, ra = b[case], a.get(case, {})
        cells, ratios = [case], {}
        for key in ("iteration_ms", "fit_s", "fit_em_s"):
            if key in rb and key in ra:
                ratios[key] = ra[key] / rb[key]
                cells += [f"{rb[key]:.4g}", f"{ra[key]:.4g}", f"{ratios[key]:.3f}"]
            else:
                cells += ["—"] * 3
        same = all(
            rb.get(k) == ra.get(k)
            for k in ("fit_n_iter", "fit_lower_bound", "fit_em_n_iter", "fit_em_lower_bound")
        )
        cells.append("yes (n_iter, lower bound bit for bit)" if same else "**no**")
        comparison[case] = {"before": rb, "after": ra, "after_over_before": ratios, "same_result": same}
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "bench_args": extra,
                    "rounds": args.rounds,
                    "machine": runs["after"][0]["machine"],
                    "build_info": build_info,
                    "comparison": comparison,
                    "runs": runs,
                },
                f,
                indent=1,
            )
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
