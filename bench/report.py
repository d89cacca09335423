"""Markdown tables from the harness's result dict (also works on a saved --json file:
``python bench/report.py results.json``)."""

from __future__ import annotations

import json
import sys


def _num(x, digits=3) -> str:
    """A readable number: 3 significant digits, no exponent for everyday sizes."""
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 else f"{x:.1e}"


def _speedup(row: dict, key="gmmfast_speedup") -> str:
    return f"{row[key]:.1f}×" if key in row else "—"


def _memory(row: dict) -> str:
    mem = row.get("memory")
    if not mem:
        return "—"
    if "error" in mem:
        return "failed"
    return f"{mem['peak_growth_mb']:.1f} MB"


def _skipped(row: dict) -> str:
    why = row["skipped"]
    return why if why.startswith("failed") else f"skipped ({why})"


def _rows_by_case(res: dict, key: str, n_cols: int, case_label, render) -> list:
    """The rows of a per-case table: each case's label on its first row only, a skipped
    entry as its reason, the others as ``render(label, name, entry)`` (a list of rows)."""
    rows = []
    for case in res["cases"]:
        for i, (name, entry) in enumerate(case.get(key, {}).items()):
            label = case_label(case) if i == 0 else ""
            if "skipped" in entry:
                rows.append([label, name, _skipped(entry)] + [""] * (n_cols - 3))
            else:
                rows.extend(render(label, name, entry))
    return rows


def _table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def machine_lines(res: dict) -> list:
    m = res["machine"]
    b = m["gmmfast_build_info"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    matmul = ", ".join(
        f"{dt} {v['gflops']:.1f} GFLOP/s (n={v['n']})" for dt, v in res["matmul"].items()
    )
    return [
        f"- machine: {m['cpu']}, {m['logical_cores']} logical cores, "
        f"{m['threads']} threads for every library; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'] or [])}",
        f"- {versions}",
        f"- gmmfast build: {b.get('compiler')}, {b.get('build_type')}, ISA {b.get('isa')}, "
        f"OpenMP {b.get('openmp')}; full fit through `{m['gmmfast_fit_api']}`",
        f"- NumPy matmul: {matmul}",
        "- FMA peak (`_core.fma_peak`, independent vector FMAs at the dispatcher's ISA "
        f"width, {m['threads']} threads): "
        + (", ".join(f"{dt} {v['gflops']:.1f} GFLOP/s ({v['isa']}, {v['lanes']} lanes)"
                     for dt, v in res.get("fma_peak", {}).items() if "gflops" in v) or "—"),
        f"- uptime at the start: {m.get('uptime') or '—'}; at the end: {m.get('uptime_end') or '—'}",
        f"- {m['date']}" + (", **--quick sizes**" if res["settings"]["quick"] else ""),
    ] + _busy_warning(m)


def _busy_warning(m: dict) -> list:
    """Other work on the machine distorts every timing (OpenBLAS threads in particular
    slow down by 10x and more when they have to share cores): say so in the output."""
    load = (m.get("load_average") or [0.0])[0]
    if load <= 0.5:
        return []
    return [
        f"- **WARNING: the machine was busy when the benchmark started (1-min load "
        f"{load:.1f} on {m['usable_cores'] or m['logical_cores']} cores): timings are "
        "not representative**"
    ]


def iteration_table(res: dict) -> list:
    header = [
        "case", "implementation", "ms / iteration", "gmmfast speed-up", "GFLOP/s",
        "% of matmul", "extra memory", "agrees with gmmfast",
    ]

    def render(label, name, row):
        check = row.get("check")
        if check is None:
            agrees = "(baseline)" if name == "gmmfast" else "—"
        else:
            agrees = ("ok " if check["ok"] else "**NO** ") + f"{check['max_rel_error']:.0e}"
        out = [[
            label, name, _num(row["ms"]), _speedup(row), _num(row["gflops"]),
            f"{100 * row['matmul_fraction']:.0f}%", _memory(row), agrees,
        ]]
        if check is not None and not check["ok"]:
            out.append([
                "", "**WARNING**",
                f"{name}'s iteration differs from gmmfast's by {check['max_rel_error']:.1e} "
                f"(tolerance {check['tolerance']:.0e}): lower bound "
                f"{check['lower_bound']:.1e}, means {check['means']:.1e}, "
                f"covariances {check['covariances']:.1e}",
            ] + [""] * 5)
        return out

    rows = _rows_by_case(res, "iteration", len(header),
                         lambda c: f"**{c['name']}** {c['label']}", render)
    return _table(header, rows)


def fit_table(res: dict) -> list:
    header = [
        "case", "run", "seconds", "n_iter", "final mean LL", "LL − sklearn",
        "gmmfast speed-up", "peak extra memory",
    ]

    def render(label, key, row):
        n_iter = f"{row['n_iter']}" + ("" if row["converged"] else " (not converged)")
        d_ll = row.get("ll_minus_sklearn")
        return [[
            label, key, _num(row["seconds"]), n_iter, f"{row['lower_bound']:.6f}",
            "—" if d_ll is None or row["impl"] == "sklearn" else f"{d_ll:+.1e}",
            _speedup(row), _memory(row),
        ]]

    rows = _rows_by_case(res, "fit", len(header), lambda c: f"**{c['name']}**", render)
    return _table(header, rows)


def fixed_table(res: dict) -> list:
    """gmmfast and the peers: a fixed number of EM iterations per case."""
    header = [
        "case", "implementation", "start", "seconds", "ms / iteration",
        "gmmfast speed-up (per iteration)", "final mean LL", "LL − gmmfast", "peak extra memory",
    ]

    def render(label, name, row):
        d_ll = row.get("ll_minus_gmmfast")
        seconds = _num(row["seconds"]) + (f" ({row['n_iter']} it)" if "reduced" in row else "")
        return [[
            label, name, row["start"], seconds,
            "n/a" if row["seconds_per_iteration"] is None
            else _num(1e3 * row["seconds_per_iteration"]),
            _speedup(row, "gmmfast_speedup_per_iteration"),
            f"{row['final_mean_ll']:.6f}",
            "—" if d_ll is None or name == "gmmfast" else f"{d_ll:+.1e}",
            _memory(row),
        ]]

    rows = _rows_by_case(res, "fixed", len(header), lambda c: f"**{c['name']}**", render)
    return _table(header, rows)


def ceiling_table(res: dict) -> list:
    header = [
        "case", "em_stats ms", "GFLOP performed", "GFLOP/s", "GEMM GFLOP/s", "% of GEMM",
        "FMA peak GFLOP/s", "% of FMA peak", "convention GFLOP/s (4·N·K·D² or 8·N·K·D)",
    ]
    rows = []
    for case in res["cases"]:
        c = case.get("ceiling")
        if not c:
            continue
        conv = case["flops_per_iteration"] / (c["em_stats_ms"] / 1e3) / 1e9
        rows.append([
            f"**{case['name']}** {case['label']}", _num(c["em_stats_ms"]), _num(c["flops"] / 1e9),
            _num(c["gflops"]), _num(c["gemm_gflops"]), f"{100 * c['gemm_fraction']:.0f}%",
            _num(c.get("fma_peak_gflops")),
            f"{100 * c['fma_peak_fraction']:.0f}%" if "fma_peak_fraction" in c else "—",
            _num(conv),
        ])
    return _table(header, rows)


def memory_scaling_table(res: dict) -> list:
    sc = res.get("em_stats_memory")
    if not sc:
        return []
    sizes = [str(n) for n in sc["sizes"]]
    header = ["em_stats extra memory", *[f"N={int(n):,}" for n in sizes], "data (N=largest)"]
    rows = []
    for name, entry in sc["rows"].items():
        cells = []
        for n in sizes:
            r = entry["by_n"].get(n, {})
            cells.append("failed" if "error" in r else f"{r['peak_growth_mb']:.1f} MB")
        data = entry["by_n"].get(sizes[-1], {}).get("data_mb")
        what = "em_stats" if entry["op"] == "em_stats" else "EM iteration"
        rows.append([f"{name} ({what})", *cells, f"{data:.0f} MB" if data else "—"])
    return _table(header, rows)


def targets_table(res: dict) -> list:
    rows = [[t["case"], t["target"], t["measured"], f"**{t['result']}**"] for t in res["targets"]]
    return _table(["case", "target", "measured", "result"], rows)


def render(res: dict) -> str:
    s = res["settings"]
    lines = ["## gmmfast EM benchmark", ""] + machine_lines(res) + [""]
    lines += [
        f"### One EM iteration (E-step + M-step; best of {s['repeat']} after one warm-up)",
        "",
        *iteration_table(res),
        "",
        "gmmfast speed-up = that row's time / gmmfast's time (same run, same data, same "
        "starting parameters). GFLOP/s uses the convention "
        f"{s['flop_convention']}; % of matmul compares it with NumPy's matmul above. "
        "Extra memory: peak RSS growth of one iteration in a fresh process. "
        "Agreement: largest relative difference of the lower bound, new means and new "
        "covariances from gmmfast's (tolerance "
        + ", ".join(f"{tol:.0e} {dt}" for dt, tol in s["agreement_tolerance"].items())
        + ").",
        "",
    ]
    if any(c["fit"] for c in res["cases"]):
        lines += [
            f"### Full fit (tol={s['tol']}, max_iter={s['max_iter']}, "
            f"reg_covar={s['reg_covar']}; fastest of {s.get('fit_repeat', 1)})",
            "",
            *fit_table(res),
            "",
            "`gmmfast` and `sklearn`: complete fits as a user runs them, each with its "
            "own k-means initialisation (the same draws for the same random_state: in "
            "float64 they reach the same optimum; in float32 they may not). "
            "`… EM` rows: EM only, all from gmmfast's k-means start (scikit-learn's own "
            "fit loop through `warm_start`), so they must agree; their speed-up is vs "
            "`gmmfast EM`. Final mean LL is the lower bound (scikit-learn's "
            "`lower_bound_`); LL − sklearn compares with the scikit-learn row that had "
            "the same kind of start. Peak extra memory: peak RSS growth of the run in a "
            "fresh process, above the RSS with the data loaded (— = not measured).",
            "",
        ]
    if any(c.get("ceiling") for c in res["cases"]):
        lines += [
            "### em_stats against this machine's ceilings",
            "",
            *ceiling_table(res),
            "",
            "GFLOP performed: the arithmetic em_stats's algorithm does (a multiply-add = 2 "
            "flops; full: N·K·(D(D+1)+3D) for the E-step plus as much again per (row, "
            "component) with a non-zero responsibility for the M-step; diag/spherical "
            "9·N·K·D; tied N·(4D+3D(D+1)) + 9·N·K·D; see bench/ceiling.py). GEMM: NumPy's "
            "matmul at the case's dtype, measured in this run. FMA peak: registers-only "
            "FMA chains, what the units can do at all. The last column is the old "
            "convention, for comparison with earlier results.",
            "",
        ]
    if any(c.get("fixed") for c in res["cases"]):
        peers = res.get("peers", {})
        skipped = peers.get("skipped") or {}
        lines += [
            f"### gmmfast and the peers: {s.get('peer_iters')} EM iterations, "
            f"convergence checks off (fastest of {s.get('fit_repeat', 1)})",
            "",
            *fixed_table(res),
            "",
            "start: which starting parameters the library took (see bench/README.md). "
            "ms / iteration: total / iterations, except mlpack (no way to pass a start: "
            "the difference between runs of n and 1 iterations after the same k-means). "
            "Final mean LL: of the final parameters, by gmmfast's float64 E-step for "
            "every library that exposes them (mlpack: its own gmm_probability). Peak extra "
            "memory: a 2-iteration run in a fresh process. A peer slower than "
            "`--peer-budget` runs once, with fewer iterations (shown in seconds).",
            "",
        ] + [f"- peer **{n}** not run: {why}" for n, why in skipped.items()] + (
            [""] if skipped else [])
    if res.get("em_stats_memory"):
        sc = res["em_stats_memory"]
        lines += [
            f"### Extra memory vs N ({sc['covariance_type']}, D={sc['n_features']}, "
            f"K={sc['n_components']})",
            "",
            *memory_scaling_table(res),
            "",
        ]
    if res["targets"]:
        lines += ["### Targets (from the issue)", "", *targets_table(res), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/report.py RESULTS.json")
    with open(sys.argv[1]) as f:
        print(render(json.load(f)))
