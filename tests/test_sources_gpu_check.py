"""scripts/gpu_check.sh: its CPU-only parts run (a dry run on the CPU), and it exits cleanly without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_on_the_cpu_prints_one_table(tmp_path):
    out = tmp_path / "rows.json"
    run = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--no-bf16", "--json",
                          str(out)], capture_output=True, text=True, check=False, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(out.read_text())
    checks = [r["check"] for r in rows]
    assert checks[0] == "exact k* 2000 x 64" and checks[1].startswith("exact k* / bare X @ X.T")
    assert any(c.startswith("extract RobustBench Addepalli2021Towards_RN18 fp32") for c in checks)
    assert any(c.startswith("extract tiny OpenCLIP ViT fp32") for c in checks)
    assert all(r["ok"] for r in rows) and rows[0]["result"] == "0 of 2000 k* differ"
    assert run.stdout.count(" | ") >= len(rows) and "check" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_exits_cleanly():
    run = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, check=False, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0 and "no CUDA device on this machine" in run.stdout
