"""Shared by the demos: write a run's measured results as JSON (examples/results/<demo>.json).

The file records what the demo printed as its result, the command-line arguments, the
settings the run used (for demos whose ``run()`` has keyword defaults that --quick
overrides), the torch and gmmfast versions, torch's thread count, the elapsed time and
the date, so that the numbers quoted in the README can be traced to a run.
"""

from __future__ import annotations

import datetime
import inspect
import json
import pathlib


def write_results(path, script, args, results, elapsed, run=None, run_kwargs=None) -> None:
    """Write ``results`` of the demo ``script`` (its ``__file__``) to ``path``; ``run`` and
    ``run_kwargs``: the demo's run function and the keywords it was called with."""
    import torch

    import gmmfast

    doc = {"script": f"examples/{pathlib.Path(script).name}",
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "elapsed_seconds": elapsed, "torch": torch.__version__, "gmmfast": gmmfast.__version__,
           "torch_threads": torch.get_num_threads(), "args": vars(args)}
    if run is not None:
        defaults = {k: v.default for k, v in inspect.signature(run).parameters.items()}
        doc["run_settings"] = {**defaults, **(run_kwargs or {})}
    doc["results"] = results
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def run_and_record(args, script, run, run_kwargs) -> dict:
    """A demo's main(): torch threads from ``args.threads``, the figure's folder made when
    ``args.out`` is set, ``run(**run_kwargs)`` timed, its results written to ``args.json``
    (unless empty). Returns the results."""
    import time

    import torch

    torch.set_num_threads(args.threads)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run(**run_kwargs)
    if args.json:
        write_results(args.json, script, args, res, time.perf_counter() - t0, run=run, run_kwargs=run_kwargs)
    return res
