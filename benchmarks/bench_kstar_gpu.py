#!/usr/bin/env python3
"""Where exact k* spends its time on a GPU, and which tile size suits it: prints measured figures, asserts nothing.

    python benchmarks/bench_kstar_gpu.py [--device cuda] [--sizes 20000x512,200000x512] [--tiles 2048:512,8192:2048]

For each N x D (Gaussian classes, 10 of them, as in ``bench_kstar.py``):

* the phases of ``compute_kstar(method="exact")``: input checks, the class-sorted float32/float64 layout on the
  device, the exact kernel (``exact_counts``), and the whole call; each best of 3 after a warm-up;
* the bare float32 product ``X @ X.T`` in row blocks of 4,096 without keeping it (``bench_kstar.py``'s floor), best
  of 3;
* the kernel alone for each ``ROWS:DIAGONAL`` pair in ``--tiles`` (square tiles of ROWS rows in the foreign pass,
  blocks of DIAGONAL rows in the same-class pass), and its ratio to the product.

Without CUDA it runs on the CPU with small sizes (a dry run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_kstar import bare_product  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, device: torch.device, repeat: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def blobs(n: int, dim: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(0, 1.0, size=(classes, dim))
    return (centres[labels] + rng.normal(0, 3.0, size=(n, dim))).astype(np.float32), labels


def main() -> None:
    from kstar_utils import compute_kstar, neighbours
    from kstar_utils.validation import check_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="20000x512,200000x512")
    parser.add_argument("--tiles", default="2048:512,4096:1024,8192:1024,8192:2048,16384:4096",
                        help="ROWS:DIAGONAL pairs: the tiles' rows and the same-class pass's rows per block")
    args = parser.parse_args()
    device = torch.device(args.device if torch.cuda.is_available() or args.device == "cpu" else "cpu")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    tiles = [tuple(int(v) for v in t.split(":")) for t in args.tiles.split(",")]
    if device.type == "cpu":
        sizes, tiles = [(3000, 64)], [(512, 256), (1024, 512)]
        print("no CUDA: a dry run on the CPU with small sizes")
    else:
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    names = (("CUDA_TILE_ROWS", "CUDA_TILE_BYTES", "CUDA_SAME_CLASS_ROWS") if device.type == "cuda"
             else ("DEFAULT_TILE_ROWS", "TILE_BYTES", "SAME_CLASS_ROWS"))
    saved = tuple(getattr(neighbours, name) for name in names)
    print("default tiles on this device: " + ", ".join(f"{n} = {v}" for n, v in zip(names, saved)))
    for n, dim in sizes:
        x, y = blobs(n, dim)
        checked = check_inputs(x, y, "euclidean")
        phases = {
            "input checks": lambda: check_inputs(x, y, "euclidean"),
            "class-sorted layout on the device": lambda: neighbours.sort_by_class(checked.features, checked.codes,
                                                                                    device),
            "compute_kstar(method='exact'), whole call": lambda: compute_kstar(x, y, method="exact",
                                                                                 device=str(device)),
        }
        print(f"\nN = {n:,}, D = {dim}, 10 classes")
        for name, fn in phases.items():
            print(f"  {name:<46} {best_of(fn, device):8.3f} s", flush=True)
        data = neighbours.sort_by_class(checked.features, checked.codes, device)
        xt = torch.from_numpy(x).to(device)
        with neighbours.full_float32_precision():
            t_mm = best_of(lambda: bare_product(xt), device)
        whole = best_of(phases["compute_kstar(method='exact'), whole call"], device, repeat=1)
        print(f"  {'bare X @ X.T in 4,096-row blocks, not kept':<46} {t_mm:8.3f} s   "
              f"(whole call / product {whole / t_mm:.2f})")
        for rows, same in tiles:
            for name, value in zip(names, (rows, rows * rows * 4, same)):
                setattr(neighbours, name, value)
            try:
                t = best_of(lambda: neighbours.exact_counts(data), device)
            finally:
                for name, value in zip(names, saved):
                    setattr(neighbours, name, value)
            label = f"exact kernel, {rows}-row tiles, {same}-row diagonal"
            print(f"  {label:<46} {t:8.3f} s   kernel / product {t / t_mm:.2f}", flush=True)

if __name__ == "__main__":
    main()
