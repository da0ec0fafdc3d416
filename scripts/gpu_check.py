#!/usr/bin/env python
"""GPU check: the CUDA paths of kstar give the CPU's numbers, and how fast. Run by scripts/gpu_check.sh.

Checks (one table at the end, exit status 1 when a check fails):

1. exact k* on the device and on the CPU, N x D Gaussian features in 10 classes (default 20,000 x 512): the k* of
   every sample must be identical; both times are reported;
2. the device's exact k* time against the bare matrix product of the same features (X @ X.T, in the same number of
   row blocks), as a ratio: the cost of k* beyond the distances;
3. extraction of a RobustBench zoo architecture (random weights, seeded, saved as a local checkpoint and loaded
   through kstar's RobustBench source) and of a tiny OpenCLIP model (a local config, random weights saved to a local
   file; no download) on the device and on the CPU: features equal within a relative tolerance of 1e-3 (TF32 off);
   plus the same extraction in bf16 autocast on the device, against a looser 5e-2, to exercise that path;
4. peak device memory of each step.

Without CUDA it says so and exits 0. ``--device cpu`` is a dry run of every step on the CPU (the "device" side is
the CPU too), with ``--tiny`` sizes: the test suite runs it that way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KSTAR_OFFLINE", "1")

import numpy as np
import torch

TOLERANCE = 1e-3       # relative max |device - cpu| / max |cpu| for fp32 features
BF16_TOLERANCE = 5e-2  # the same for bf16 autocast against fp32 CPU features
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _timed(fn, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def features_blobs(n: int, dim: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes: every k* pattern occurs, ties do not."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(0, 1.0, size=(classes, dim))
    return (centres[labels] + rng.normal(0, 3.0, size=(n, dim))).astype(np.float32), labels


def check_kstar(n: int, dim: int, device: torch.device) -> list[dict]:
    from kstar_utils import compute_kstar

    x, y = features_blobs(n, dim)
    cpu, t_cpu = _timed(lambda: compute_kstar(x, y, method="exact", device="cpu"), torch.device("cpu"))
    compute_kstar(x[:512], y[:512], method="exact", device=str(device))  # warm-up (CUDA context, kernels)
    _reset_peak(device)
    dev, t_dev = _timed(lambda: compute_kstar(x, y, method="exact", device=str(device)), device)
    peak = _peak_mib(device)
    differ = int(np.sum(np.asarray(cpu.kstar) != np.asarray(dev.kstar)))
    rows = [{"check": f"exact k* {n} x {dim}", "cpu_s": t_cpu, "device_s": t_dev,
             "result": f"{differ} of {n} k* differ", "ok": differ == 0, "peak_mib": peak}]

    xt = torch.from_numpy(x).to(device)
    block = 4096  # the baseline of benchmarks/bench_kstar.py: the product in row blocks of 4,096, not kept

    def bare() -> None:
        for lo in range(0, n, block):
            xt[lo:lo + block] @ xt.T

    bare()  # warm-up
    _, t_mm = _timed(bare, device)
    rows.append({"check": f"exact k* / bare X @ X.T ({block}-row blocks)", "cpu_s": None, "device_s": t_mm,
                 "result": f"ratio {t_dev / t_mm:.1f}", "ok": True, "peak_mib": None})
    return rows


def _random_images(n: int, size: int, seed: int = 0):
    from kstar_utils.datasets import ArrayImages, LabelledImages

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 10
    return LabelledImages(ArrayImages(images), labels, [str(i) for i in range(10)], f"random{size}", "test")


BF16 = {"enabled": True}


def _compare(name: str, load, data, device: torch.device, batch_size: int) -> list[dict]:
    from kstar_utils.extract import extract_features

    def run(dev: torch.device, precision: str = "fp32"):
        model = load()
        return extract_features(model, data, batch_size=batch_size, device=dev, cache=False, progress=False,
                                precision=precision)

    cpu, t_cpu = _timed(lambda: run(torch.device("cpu")), torch.device("cpu"))
    run(device)  # warm-up
    _reset_peak(device)
    dev, t_dev = _timed(lambda: run(device), device)
    peak = _peak_mib(device)
    scale = float(np.abs(cpu.features).max()) or 1.0
    rel = float(np.abs(cpu.features - dev.features).max()) / scale
    rows = [{"check": f"extract {name} fp32 ({len(data)} images)", "cpu_s": t_cpu, "device_s": t_dev,
             "result": f"max rel. diff {rel:.1e} (tol {TOLERANCE:g})", "ok": rel <= TOLERANCE, "peak_mib": peak}]
    if not BF16["enabled"] or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return rows
    _reset_peak(device)
    half, t_half = _timed(lambda: run(device, "bf16"), device)
    rel_h = float(np.abs(cpu.features - half.features).max()) / scale
    rows.append({"check": f"extract {name} bf16 autocast", "cpu_s": None, "device_s": t_half,
                 "result": f"max rel. diff {rel_h:.1e} (tol {BF16_TOLERANCE:g}); stored {half.meta['dtype']}",
                 "ok": rel_h <= BF16_TOLERANCE and half.meta["precision"] == "bf16", "peak_mib": _peak_mib(device)})
    return rows


def check_zoo_model(model_name: str, n_images: int, device: torch.device, folder: Path) -> list[dict]:
    """A RobustBench CIFAR-10 architecture with seeded random weights, through kstar's RobustBench source."""
    from kstar_utils.sources import load_source
    from kstar_utils.sources.robustbench import checkpoint_path, zoo_entry

    torch.manual_seed(0)
    net = zoo_entry(model_name, "cifar10", "Linf")["model"]()
    path = checkpoint_path(model_name, "cifar10", "Linf", folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    data = _random_images(n_images, 32)
    return _compare(f"RobustBench {model_name}", lambda: load_source(
        "robustbench", model_name, dataset="cifar10", threat_model="Linf", model_dir=folder), data, device, 64)


def check_tiny_openclip(n_images: int, device: torch.device, folder: Path) -> list[dict]:
    """A tiny OpenCLIP ViT from a local config and a local random-weights file (no download)."""
    import open_clip

    from kstar_utils.sources import load_source

    name = "kstar-gpu-check-vit"
    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / "tiny_openclip.pt"
    torch.save(open_clip.create_model(name).state_dict(), weights)
    data = _random_images(n_images, 64)
    return _compare("tiny OpenCLIP ViT", lambda: load_source("openclip", name, pretrained=str(weights),
                                                             model_config=str(config)), data, device, 64)


def format_table(rows: list[dict], device: torch.device) -> str:
    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    header = ("check", "cpu s", f"{device.type} s", "result", "peak MiB", "ok")
    body = [(r["check"], sec(r["cpu_s"]), sec(r["device_s"]), r["result"],
             "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}", "yes" if r["ok"] else "NO") for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    parser.add_argument("--n", type=int, default=20000, help="samples for the k* check (default 20000)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension for the k* check (default 512)")
    parser.add_argument("--images", type=int, default=512, help="images per extraction check (default 512)")
    parser.add_argument("--zoo-model", default="Standard", help="RobustBench CIFAR-10 Linf architecture to build")
    parser.add_argument("--tiny", action="store_true", help="small sizes (2,000 x 64 k*, 16 images, ResNet-18)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast extraction rows")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.tiny:
        args.n, args.dim, args.images, args.zoo_model = 2000, 64, 16, "Addepalli2021Towards_RN18"
    BF16["enabled"] = not args.no_bf16
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device!r}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check. "
              "Run it on a machine with a GPU, or with --device cpu for a dry run of the checks.")
        return 0
    if device.type == "cuda":
        # compare float32 with float32: TF32 would change the CUDA numbers, not the CPU ones
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"gpu_check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    else:
        print(f"gpu_check dry run on {device} (both sides on the CPU), torch {torch.__version__}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kstar-gpu-check-") as tmp:
        folder = Path(tmp)
        steps = {"exact k*": lambda: check_kstar(args.n, args.dim, device),
                 f"extract {args.zoo_model}": lambda: check_zoo_model(args.zoo_model, args.images, device,
                                                                      folder / "robustbench"),
                 "extract tiny OpenCLIP": lambda: check_tiny_openclip(args.images, device, folder)}
        for name, step in steps.items():
            try:
                rows += step()
            except Exception as err:  # noqa: BLE001  (report the step as failed, go on with the others)
                rows.append({"check": name, "cpu_s": None, "device_s": None,
                             "result": f"{type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}",
                             "ok": False, "peak_mib": None})
    if device.type == "cuda":
        peaks = [r["peak_mib"] for r in rows if r["peak_mib"] is not None]
        rows.append({"check": "peak device memory, largest step", "cpu_s": None, "device_s": None,
                     "result": f"{max(peaks, default=0):.0f} MiB allocated", "ok": True,
                     "peak_mib": max(peaks, default=None)})
    print(format_table(rows, device))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
