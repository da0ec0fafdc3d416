"""Reports: profiles, the notebooks under papermill (smoke profile), the HTML pages, and the index in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest

from conftest import require_or_skip
from kstar_utils.report import NOTEBOOKS, Results, load_profile, notebooks_dir, render

pytestmark = pytest.mark.slow
EXPECTED_FIGURES = {"01_framework": 2, "02_compare_models": 3, "03_robustness": 1, "04_generalisation": 2,
                    "05_summary_table": 0}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("KSTAR_ZOO", str(root / "zoo"))
    mp.setenv("KSTAR_CACHE", str(root / "cache"))
    try:
        index = render("smoke", root / "site", progress=False)
    finally:
        mp.undo()
    return index


def test_profiles_load_and_bad_ones_are_named(tmp_path):
    for name in ("default", "smoke", "fashion", "paper"):
        assert load_profile(name)["name"] == name
    paper = load_profile("paper")
    assert {"name": "Wang2023Better_WRN-70-16", "threat_model": "L2"} in paper["robustbench"]["compare"]
    with pytest.raises(ValueError, match="unknown profile"):
        load_profile("nonsense")
    empty = tmp_path / "mine.yaml"
    empty.write_text("title: nothing\n")
    with pytest.raises(ValueError, match="names no models"):
        load_profile(empty)


def test_source_notebooks_are_clean_and_parameterised():
    for name in [n for n, _ in NOTEBOOKS] + ["model"]:
        nb = nbformat.read(str(notebooks_dir() / f"{name}.ipynb"), as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} has outputs"
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "def " not in code and "matplotlib.use" not in code, f"{name} should only call kstar_utils"
        assert any(c.cell_type == "markdown" for c in nb.cells)


def test_every_page_holds_its_figures_and_tables(report):
    site = report.parent
    for name, figures in EXPECTED_FIGURES.items():
        page = (site / f"{name}.html").read_text()
        assert page.count("<img") == figures, name
        assert "Traceback" not in page and "Warning:" not in page, name
        assert (site / "executed" / f"{name}.ipynb").exists()
    assert "<table" in (site / "05_summary_table.html").read_text()
    model_pages = sorted(site.glob("model--*.html"))
    assert len(model_pages) == 2 and all(p.read_text().count("<img") == 1 for p in model_pages)
    index = report.read_text()
    assert index.count("<img") == 2 and "<table" in index
    for href in re.findall(r'href="([^"]+\.html)"', index):
        assert (site / href).exists(), href
    assert (site / "results" / "summary_table.csv").exists()


def test_pages_are_self_contained(report):
    for page in report.parent.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"""<(script|img|iframe)[^>]*\bsrc=["']?(https?:)?//""", text, re.I), page.name
        assert not re.search(r"""<link[^>]*\bhref=["']?(https?:)?//""", text, re.I), page.name
        assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img[^>]*src="([^"]+)"', text))


def test_results_folder_reads_back(report):
    results = Results(report.parent / "results")
    assert results.manifest["profile"] == "smoke"
    key = results.manifest["models"][0]
    assert len(results.kstar(key).kstar) == len(results.features(results.manifest["compare"][0]).labels)
    assert not results.table("robustness").empty


def _screenshot(page: Path, png: Path, profile: Path) -> np.ndarray:
    from PIL import Image

    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=1280,1400", f"--screenshot={png}", page.as_uri()]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-n"] + command  # a network namespace with no interface: the network is off
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def test_index_opens_from_disk_offline_in_chromium_and_shows_the_figures(report, tmp_path):
    require_or_skip(shutil.which("chromium") is not None, "Debian package chromium")
    shot = _screenshot(report, tmp_path / "index.png", tmp_path / "p1")
    stripped = tmp_path / "no-images.html"
    stripped.write_text(re.sub(r"<img[^>]*>", "", report.read_text()))
    bare = _screenshot(stripped, tmp_path / "bare.png", tmp_path / "p2")
    assert (shot < 250).any(axis=2).mean() > 0.05  # the page is not blank
    changed = np.abs(shot - bare).sum(axis=2) > 30
    assert changed.mean() > 0.10, "the embedded figures did not render"


def test_a_users_yaml_of_models_and_data_sets_is_collected(tmp_path, monkeypatch):
    """RobustBench (a local model_dir) and OpenCLIP (a local config and checkpoint) on local data, from a YAML."""
    import yaml

    from fixtures_data import TINY_CLIP, pyautoattack_resnet18, write_cifar10, write_mnist_like
    from kstar_utils.report import collect

    monkeypatch.setenv("KSTAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)  # format, not bytes
    (tmp_path / "models" / "cifar10" / "Linf").mkdir(parents=True)
    (tmp_path / "models" / "cifar10" / "Linf" / "Addepalli2021Towards_RN18.pt").symlink_to(pyautoattack_resnet18())
    write_cifar10(tmp_path / "cifar", n_test=40)
    write_mnist_like(tmp_path / "mnist", n_test=40)
    config = tmp_path / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    import open_clip
    import torch

    open_clip.add_model_config(config)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), tmp_path / "tiny-clip.pt")
    profile = tmp_path / "mine.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "mine", "title": "my models",
        "robustbench": {"dataset": "cifar10", "data_root": str(tmp_path / "cifar"), "per_class": 4,
                        "model_dir": str(tmp_path / "models"),
                        # pyautoattack's checkpoint sits in this zoo slot: it is standard-trained, so say so
                        "models": [{"name": "Addepalli2021Towards_RN18", "threat_model": "Linf",
                                    "label": "pyautoattack ResNet-18 (standard training)",
                                    "clean_accuracy": 0.9, "robust_accuracy": 0.0}],
                        "compare": [{"name": "Addepalli2021Towards_RN18", "threat_model": "Linf"}]},
        "openclip": {"datasets": ["mnist"], "data_root": str(tmp_path / "mnist"), "per_class": 4,
                     "models": [{"name": "tiny-clip", "pretrained": str(tmp_path / "tiny-clip.pt"),
                                 "model_config": str(config)}]},
    }))
    results = Results(collect(load_profile(profile), tmp_path / "results", progress=False))
    robustness = results.table("robustness")
    assert robustness.loc[0, "robust_accuracy"] == 0.0 and robustness.loc[0, "clean_accuracy"] == 0.9
    assert robustness.loc[0, "model"] == "pyautoattack ResNet-18 (standard training)"
    assert len(results.kstar(robustness.loc[0, "key"]).kstar) == 40
    generalisation = results.table("generalisation")
    assert list(generalisation["data"]) == ["mnist"] and np.isnan(generalisation.loc[0, "accuracy"])  # unpublished
    assert results.manifest["compare"] == ["Addepalli2021Towards_RN18_Linf"]
    assert results.table("table").loc[0, "robust_accuracy"] == 0.0
    assert results.features("Addepalli2021Towards_RN18_Linf").features.shape == (40, 512)


def test_published_accuracies_join_the_paper_profile():
    from kstar_utils.accuracy import openclip_zeroshot, robustbench_accuracy

    rb, oc = robustbench_accuracy(), openclip_zeroshot()
    paper = load_profile("paper")
    for m in paper["robustbench"]["models"]:
        row = rb[(rb["model"] == m["name"]) & (rb["threat_model"] == m["threat_model"])]
        assert len(row) == 1 and row["source"].str.contains("model_info").all(), m
    for m in paper["openclip"]["models"]:
        assert len(oc[(oc["model"] == m["name"]) & (oc["pretrained"] == m["pretrained"])]) == 1, m
    wang = rb[(rb["model"] == "Wang2023Better_WRN-70-16") & (rb["threat_model"] == "L2")].iloc[0]
    assert (wang["clean_accuracy"], wang["autoattack_accuracy"]) == (95.54, 84.86)
