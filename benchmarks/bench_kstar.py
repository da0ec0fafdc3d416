"""Benchmark of the k* engine: prints measured figures, asserts nothing. Run: python benchmarks/bench_kstar.py

1. exact k* time / bare N x N x D float32 matrix product time (same dtype, same threads), N = 20,000, D = 512.
2. exact k* against the authors' algorithm (full distance matrix, full argsort of each row, first differing label)
   at N = 10,000, D = 512: speed-up and peak memory of both (each measured in its own process).
3. N = 200,000, D = 128, 10 overlapping Gaussian classes: ANN time / exact time and the audit's fraction identical.
   Two kinds of data are printed: classes with a low intrinsic dimension (a 16-dimensional Gaussian mixture embedded
   in 128 dimensions with small isotropic noise, the shape of real latent features) and isotropic 128-dimensional
   Gaussians, the worst case for any graph-based ANN (distances concentrate, so the nearest neighbour is barely
   nearer than the 30th).

Times are the best of ``--repeat`` runs after one warm-up (numba compilation of pynndescent is excluded and reported
separately). ``--quick`` runs every part at a tenth of the size, for a smoke check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}")


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gaussian_classes(n: int, dim: int, classes: int, seed: int, latent: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes: isotropic in ``dim`` dimensions, or in a ``latent``-dimensional subspace."""
    from kstar_utils.synthetic import gaussian_classes as make

    return make(n, dim, classes, separation=0.35 if latent is None else 0.6, seed=seed, latent=latent)


def part_matmul_ratio(n: int, dim: int, repeat: int) -> dict:
    import torch

    from kstar_utils import compute_kstar

    x, y = gaussian_classes(n, dim, 10, 0, latent=None)
    xt = torch.from_numpy(x)
    xt @ xt[:100].T  # warm-up
    matmul = best_of(lambda: xt @ xt.T, repeat)
    compute_kstar(x[:2000], y[:2000], method="exact")
    exact = best_of(lambda: compute_kstar(x, y, method="exact"), repeat)
    return {"n": n, "dim": dim, "matmul_s": matmul, "exact_s": exact, "ratio": exact / matmul}


AUTHORS_SNIPPET = """
import json, sys, time
from pathlib import Path
import numpy as np
from scipy.spatial.distance import cdist
from kstar_utils import compute_kstar
from kstar_utils.synthetic import gaussian_classes


def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024


n, dim = int(sys.argv[1]), int(sys.argv[2])
x, y = gaussian_classes(n, dim, 10, separation=0.35, seed=0)
compute_kstar(x[:500], y[:500], method="exact")  # libraries loaded before measuring
base = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
start = time.perf_counter()
if sys.argv[3] == "authors":
    d = cdist(x, x)                      # full N x N distance matrix (float64)
    order = np.argsort(d, axis=1)        # full argsort of every row
    differ = y[order] != y[:, None]      # label of each neighbour differs?
    kstar = differ.argmax(axis=1)        # first differing label (self sorts first, at rank 0)
else:
    kstar = compute_kstar(x, y, method="exact").kstar
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_bytes": status("VmHWM") - base, "kstar_sum": int(np.sum(kstar))}))
"""


def part_authors(n: int, dim: int) -> dict:
    out = {}
    for which in ("authors", "kstar"):
        proc = subprocess.run([sys.executable, "-c", AUTHORS_SNIPPET, str(n), str(dim), which], capture_output=True,
                              text=True, check=True, cwd=ROOT)
        out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["speedup"] = out["authors"]["seconds"] / out["kstar"]["seconds"]
    out["memory_ratio"] = out["authors"]["peak_bytes"] / max(out["kstar"]["peak_bytes"], 1)
    out["same_kstar_sum"] = out["authors"]["kstar_sum"] == out["kstar"]["kstar_sum"]
    return out


def part_ann(n: int, dim: int, latent: int | None, repeat: int) -> dict:
    from kstar_utils import compute_kstar

    x, y = gaussian_classes(n, dim, 10, 1, latent=latent)
    start = time.perf_counter()
    compute_kstar(x[: min(n, 40_000)], y[: min(n, 40_000)], method="ann")  # numba compilation / cache load
    warm = time.perf_counter() - start
    results = {}
    ann = best_of(lambda: results.__setitem__("ann", compute_kstar(x, y, method="ann", seed=0)), repeat)
    exact = best_of(lambda: results.__setitem__("exact", compute_kstar(x, y, method="exact")), 1)
    a, e = results["ann"], results["exact"]
    return {
        "n": n, "dim": dim, "latent_dim": latent, "ann_s": ann, "exact_s": exact, "speedup": exact / ann,
        "audit": a.audit, "identical_all": float(np.mean(a.kstar == e.kstar)),
        "exact_search_samples": a.params["exact_search_samples"], "warmup_s": warm,
        "gamma_approx_exact": e.gamma_approx, "gamma_approx_ann": a.gamma_approx,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    parts = {int(p) for p in args.parts.split(",")}
    print(f"machine: {machine()}", flush=True)
    figures: dict = {"machine": machine()}
    if 1 in parts:
        r = part_matmul_ratio(20_000 // scale, 512, args.repeat)
        figures["matmul_ratio"] = r
        print(f"[1] exact k* / bare matmul at N={r['n']}, D={r['dim']}: {r['exact_s']:.2f} s / {r['matmul_s']:.2f} s "
              f"= {r['ratio']:.2f} (goal <= 1.5)", flush=True)
    if 2 in parts:
        r = part_authors(10_000 // scale, 512)
        figures["authors"] = r
        print(f"[2] authors' algorithm vs exact k* at N={10_000 // scale}, D=512: "
              f"{r['authors']['seconds']:.2f} s vs {r['kstar']['seconds']:.2f} s = {r['speedup']:.1f}x faster "
              f"(goal >= 5x); peak memory {r['authors']['peak_bytes'] / 2**20:.0f} MiB vs "
              f"{r['kstar']['peak_bytes'] / 2**20:.0f} MiB; same k* sum: {r['same_kstar_sum']}", flush=True)
    if 3 in parts:
        for latent in (16, None):
            r = part_ann(200_000 // scale, 128, latent, args.repeat)
            figures[f"ann_latent_{latent}"] = r
            kind = f"{latent}-d latent Gaussian classes" if latent else "isotropic 128-d Gaussian classes"
            print(f"[3] ANN vs exact at N={r['n']}, D=128, {kind}: {r['ann_s']:.1f} s vs {r['exact_s']:.1f} s = "
                  f"{r['speedup']:.2f}x faster (goal >= 2.5x); audit {r['audit']['fraction_identical']:.2%} identical "
                  f"(all samples: {r['identical_all']:.2%}; goal >= 99%); {r['exact_search_samples']} samples had no "
                  f"foreign graph neighbour; Gamma' exact {r['gamma_approx_exact']:.3f} vs ANN "
                  f"{r['gamma_approx_ann']:.3f}; warm-up {r['warmup_s']:.0f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
