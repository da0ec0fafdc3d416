"""The shipped accuracy tables: generated from upstream's files, complete, corrected, and joined to RobustBench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kstar_utils.accuracy import accuracy_sources, loadable_models, openclip_zeroshot, robustbench_accuracy

ROOT = Path(__file__).resolve().parents[1]
RB_HEAD = "78fcc9e48a07a861268f295a777b975f25155964"  # RobustBench commit the shipped CSV was generated from
OC_HEAD = "89fb801f1e6087880e951fc8354b8a2077b79c6d"  # open_clip commit


def _row(rb: pd.DataFrame, model: str, threat: str, dataset: str = "cifar10") -> pd.Series:
    hit = rb[(rb["model"] == model) & (rb["threat_model"] == threat) & (rb["dataset"] == dataset)]
    assert len(hit) == 1, (model, threat)
    return hit.iloc[0]


def test_coverage_and_provenance():
    rb, oc = robustbench_accuracy(), openclip_zeroshot()
    counts = rb.groupby(["dataset", "threat_model"]).size().to_dict()
    assert counts == {("cifar10", "Linf"): 99, ("cifar10", "L2"): 21, ("cifar100", "Linf"): 38,
                      ("imagenet", "Linf"): 30}
    assert len(oc) == 121 and not oc.duplicated(["model", "pretrained"]).any()
    assert (rb["read_commit"] == RB_HEAD).all() and (oc["read_commit"] == OC_HEAD).all()
    assert rb["source_commit"].str.fullmatch(r"[0-9a-f]{40}").all()
    assert all(f"model_info/{d}/{t}/{m}.json @ {c}" in s for d, t, m, c, s in
               rb[["dataset", "threat_model", "model", "source_commit", "source"]].itertuples(index=False))
    sources = accuracy_sources()
    assert sources["robustbench"]["commit"] == RB_HEAD and sources["open_clip"]["commit"] == OC_HEAD
    assert sources["robustbench"]["rows"]["cifar10/Linf"] == 99 and sources["open_clip"]["rows"] == 121


def test_the_stale_rows_are_corrected():
    rb = robustbench_accuracy()
    sehwag = _row(rb, "Sehwag2021Proxy_R18", "Linf")
    assert (sehwag.clean_accuracy, sehwag.autoattack_accuracy) == (84.59, 55.54)
    assert sehwag.source_commit.startswith("c1b6de8")  # "added updated results for Sehwag2021Proxy"
    sehwag2 = _row(rb, "Sehwag2021Proxy_R18", "L2")
    assert (sehwag2.clean_accuracy, sehwag2.autoattack_accuracy) == (89.76, 74.41)
    wang = _row(rb, "Wang2023Better_WRN-70-16", "L2")
    assert (wang.clean_accuracy, wang.autoattack_accuracy) == (95.54, 84.97)
    assert _row(rb, "Rice2020Overfitting", "L2").architecture == "PreActResNet-18"
    assert _row(rb, "Rice2020Overfitting", "Linf").architecture == "WideResNet-34-20"


def test_leaderboard_accuracy_takes_the_external_evaluation():
    rb = robustbench_accuracy()
    external = rb[rb["external_accuracy"].notna()]
    assert len(external) > 0
    assert (external["robust_accuracy"] == external["external_accuracy"]).all()
    plain = rb[rb["external_accuracy"].isna()]
    assert (plain["robust_accuracy"] == plain["autoattack_accuracy"]).all()


def test_paper_models_have_published_numbers():
    oc = openclip_zeroshot()
    vit = oc[(oc["model"] == "ViT-B-32") & (oc["pretrained"] == "openai")].iloc[0]
    assert (vit.zeroshot_avg38, vit.imagenet1k, vit.cifar10, vit.stl10) == (0.5245, 0.6332, 0.8983, 0.9713)
    assert {"mnist", "svhn", "cifar100", "source_commit"} <= set(oc.columns)


def test_loadable_models_are_in_robustbench_1_1_1():
    from kstar_utils.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    for dataset, threat, expected in (("cifar10", "Linf", 76), ("cifar10", "L2", 21), ("cifar100", "Linf", 38),
                                      ("imagenet", "Linf", 30)):
        names = loadable_models(dataset, threat)
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
        assert len(names) == expected and set(names) <= set(zoo), (dataset, threat)
    assert "Madry2018Towards" not in loadable_models("cifar10", "Linf")  # on the leaderboard, not in the zoo
    with pytest.raises(ValueError, match="no cifar100/L2 models"):
        loadable_models("cifar100", "L2")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo), "PATH": "/usr/bin:/bin"}).stdout


def test_the_script_reads_upstream_files_at_a_commit(tmp_path):
    rb, oc = tmp_path / "rb", tmp_path / "oc"
    for repo in (rb, oc):
        repo.mkdir()
        _git(repo, "init", "-q")
    info = rb / "model_info" / "cifar10" / "Linf"
    info.mkdir(parents=True)
    (info / "M1.json").write_text(json.dumps({"eps": "8/255", "clean_acc": "90.1", "autoattack_acc": "50.2",
                                              "architecture": "WRN", "venue": "V", "name": "N"}))
    _git(rb, "add", "-A")
    _git(rb, "commit", "-q", "-m", "first")
    first = _git(rb, "rev-parse", "HEAD").strip()
    (info / "M2.json").write_text(json.dumps({"eps": "8/255", "clean_acc": "91", "autoattack_acc": "60",
                                              "external": "59.5", "architecture": "RN"}))
    (rb / "model_info" / "cifar10" / "L2").mkdir()
    (rb / "model_info" / "cifar10" / "L2" / "M1.json").write_text(json.dumps({"eps": "0.5", "clean_acc": "1",
                                                                              "autoattack_acc": "2"}))
    _git(rb, "add", "-A")
    _git(rb, "commit", "-q", "-m", "second")
    second = _git(rb, "rev-parse", "HEAD").strip()
    (oc / "docs").mkdir()
    (oc / "docs" / "openclip_results.csv").write_text(
        "name,pretrained,params (M),FLOPs (B),Average perf. on 38 datasets,ImageNet 1k,CIFAR-10,STL-10\n"
        "ViT-B-32,openai,151.28,14.78,0.5245,0.6332,0.8983,0.9713\n")
    _git(oc, "add", "-A")
    _git(oc, "commit", "-q", "-m", "table")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_accuracy.py"), "--robustbench", str(rb),
                          "--open-clip", str(oc / ".git"), "--out", str(out)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out / "robustbench_accuracy.csv")
    m1 = table[(table["model"] == "M1") & (table["threat_model"] == "Linf")].iloc[0]
    m2 = table[table["model"] == "M2"].iloc[0]
    assert (m1.clean_accuracy, m1.autoattack_accuracy, m1.source_commit, m1.read_commit) == (90.1, 50.2, first, second)
    assert (m2.robust_accuracy, m2.external_accuracy, m2.source_commit) == (59.5, 59.5, second)
    assert len(table) == 3
    zs = pd.read_csv(out / "openclip_zeroshot.csv")
    assert list(zs.columns[:7]) == ["model", "pretrained", "params_m", "flops_b", "zeroshot_avg38", "imagenet1k",
                                    "cifar10"]
    assert zs.loc[0, "stl10"] == 0.9713
    record = json.loads((out / "accuracy_sources.json").read_text())
    assert record["robustbench"]["commit"] == second and record["robustbench"]["rows"]["cifar10/L2"] == 1
    old = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_accuracy.py"), "--robustbench", str(rb),
                          "--robustbench-rev", first, "--open-clip", str(oc), "--out", str(tmp_path / "old")],
                         capture_output=True, text=True, check=False)
    assert old.returncode == 0, old.stderr
    assert pd.read_csv(tmp_path / "old" / "robustbench_accuracy.csv")["model"].tolist() == ["M1"]
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_accuracy.py"), "--robustbench",
                          str(tmp_path), "--open-clip", str(oc), "--out", str(out)], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "neither a git clone nor a git directory" in bad.stderr
