#!/usr/bin/env python3
"""The cost of running the task grid on Dask: a profile on a one-worker LocalCluster against in-process execution.

    .venv/bin/python benchmarks/bench_pipeline.py [--profile default] [--repeats 1]

Both runs compute the same tasks from scratch (a fresh results store and a fresh feature cache each), on a zoo that
is trained once beforehand (training is cached across both, so it is not part of either time); AutoAttack, feature
extraction and k* (with its bootstrap) are. The one-worker cluster gives its worker all cores for torch, as the
in-process run has. Printed: each time (best of ``--repeats``) and the overhead ratio. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _run(profile_name: str, scheduler: str, root: Path, tag: str) -> float:
    from kstar_utils.pipeline import load_profile
    from kstar_utils.pipeline.run import open_client, run_grid
    from kstar_utils.pipeline.tasks import build_grid

    os.environ["KSTAR_CACHE"] = str(root / f"features-{tag}")
    profile = load_profile(profile_name)
    start = time.perf_counter()
    with open_client(scheduler, n_workers=1) as client:
        statuses = run_grid(build_grid(profile), root / f"store-{tag}", client=client, progress=False)
    seconds = time.perf_counter() - start
    failed = [s for s in statuses.values() if s["status"] != "done"]
    assert not failed, failed[:2]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--zoo", help="an already trained zoo folder (skips the warm-up run that trains it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kstar-bench-pipeline-") as tmp:
        root = Path(tmp)
        os.environ["KSTAR_ZOO"] = args.zoo or str(root / "zoo")
        os.environ["KSTAR_OFFLINE"] = "1"
        if not args.zoo:
            warm = _run(args.profile, "inprocess", root, "warm")  # trains the zoo (cached for both timed runs)
            print(f"warm-up (trains the zoo): {warm:.1f} s")
        times = {"in-process": [], "one-worker LocalCluster": []}
        for r in range(args.repeats):
            times["in-process"].append(_run(args.profile, "inprocess", root, f"a{r}"))
            times["one-worker LocalCluster"].append(_run(args.profile, "local", root, f"b{r}"))
        best = {k: min(v) for k, v in times.items()}
        print(f"profile {args.profile}: every task from an empty results store and feature cache, zoo trained; "
              f"best of {args.repeats}")
        for name, seconds in best.items():
            print(f"  {name:<26} {seconds:8.1f} s")
        ratio = best["one-worker LocalCluster"] / best["in-process"]
        print(f"  overhead ratio (cluster / in-process): {ratio:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
