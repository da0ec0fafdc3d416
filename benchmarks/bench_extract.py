"""Benchmark of feature extraction: prints measured figures, asserts nothing. Run: python benchmarks/bench_extract.py

Extraction throughput (images/s through ``extract_features``: reading the data set from disk, the model's transform,
batching, the penultimate-layer hook, copying features out) divided by the model's bare forward throughput on
pre-loaded, pre-transformed tensors, same batch size and threads. Goal on CPU: at least 0.85.

Model: the real CIFAR-10 ResNet-18 that ships with pyautoattack, loaded through RobustBench's loader. Data: CIFAR-10's
on-disk format written to a temporary folder (random pixels: throughput does not depend on the image content).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from fixtures_data import pyautoattack_resnet18, write_cifar10

    import torchvision.datasets.cifar as cifar

    from kstar_utils.datasets import open_dataset
    from kstar_utils.extract import extract_features
    from kstar_utils.sources import load_source

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "models" / "cifar10" / "Linf"
        model_dir.mkdir(parents=True)
        (model_dir / "Addepalli2021Towards_RN18.pt").symlink_to(pyautoattack_resnet18())
        write_cifar10(tmp / "data", n_test=args.images)
        cifar.check_integrity = lambda *a, **k: True  # real format, random bytes: skip the md5 comparison only
        model = load_source("robustbench", "Addepalli2021Towards_RN18", dataset="cifar10", threat_model="Linf",
                            model_dir=tmp / "models")
        data = open_dataset("cifar10", tmp / "data", "test")

        def run_extract():
            extract_features(model, data, batch_size=args.batch_size, num_workers=args.workers, cache=False,
                             progress=False)

        preloaded = torch.stack([model.transform(data.image(i)) for i in range(len(data))])

        def run_bare():
            with torch.inference_mode():
                for lo in range(0, len(preloaded), args.batch_size):
                    model.features(preloaded[lo:lo + args.batch_size]).float().cpu().numpy()

        run_bare()  # warm-up (layer discovery, allocator)
        bare = min(_timed(run_bare) for _ in range(args.repeat))
        extract = min(_timed(run_extract) for _ in range(args.repeat))
    n = len(preloaded)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"bare forward: {n / bare:.1f} images/s; extraction ({args.workers} workers): {n / extract:.1f} images/s; "
          f"ratio {bare / extract:.3f} (goal >= 0.85) on {n} 32x32 images, ResNet-18, batch {args.batch_size}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
