"""Reports: the smoke profile end to end on a two-worker Dask cluster (papermill notebooks as cluster tasks), every
page's footer, alt text and relative links, the owned output folder, a user's YAML with hostile labels and class names,
and the index in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import numpy as np
import pytest
from conftest import isolated_kstar_home, require_or_skip

from kstar_utils.errors import ReportFolderError
from kstar_utils.report import NOTEBOOKS, Results, build_report, notebooks_dir
from kstar_utils.report.publish import MANIFEST

pytestmark = pytest.mark.slow
EXPECTED_FIGURES = {"01_framework": 2, "02_compare_models": 3, "03_robustness": 2, "04_generalisation": 4,
                    "05_summary_table": 0}
FOOTER_FIELDS = ("profile", "parameters", "seeds", "data hash", "git commit", "versions", "results computed")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with isolated_kstar_home(tmp_path_factory.mktemp("report")) as root:
        yield root


@pytest.fixture(scope="module")
def report(env):
    return build_report("smoke", env / "site", scheduler="local", n_workers=2, progress=False)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.title, self._in_title, self.footer = [], [], "", False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        self._in_title = tag == "title"
        self.footer |= tag == "footer"

    def handle_data(self, data):
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag):
        self._in_title = False


class _Tags(HTMLParser):
    """Every element and attribute name of a page, and its image sources."""

    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.image_sources = set(), set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)
        if tag == "img":
            self.image_sources.append(dict(attrs).get("src", ""))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_source_notebooks_are_clean_thin_and_start_with_one_call():
    for name in [n for n, _ in NOTEBOOKS] + ["model"]:
        nb = nbformat.read(str(notebooks_dir() / f"{name}.ipynb"), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), name
        assert all(not c.get("outputs") for c in code), f"{name} has outputs"
        assert code[1].source.startswith("import kstar_utils.report.notebook as nb\n"), name
        assert code[1].source.count("\n") == 1, name  # the import, then one call
        text = "\n".join(c.source for c in code)
        assert "def " not in text and "matplotlib.use" not in text, f"{name} should only call kstar_utils"
    assert (Path(__file__).parents[1] / "notebooks").resolve() == notebooks_dir()


def test_every_page_holds_its_figures_footer_alt_text_and_working_links(report):
    site = report.parent
    pages = sorted(site.glob("*.html"))
    for name, figures in EXPECTED_FIGURES.items():
        text = (site / f"{name}.html").read_text()
        assert text.count("<img") == figures, name
        assert "Traceback" not in text and "Error:" not in text and "Warning:" not in text, name
        assert "&amp;#x27;" not in text and "&amp;lt;" not in text, name  # no entity escaped twice (shown raw)
        assert (site / "executed" / f"{name}.ipynb").exists()
    for path in pages:
        page = _parse(path)
        assert page.footer, path.name
        text = path.read_text()
        for field in FOOTER_FIELDS:
            assert f"<dt>{field}</dt>" in text, (path.name, field)
        for image in page.images:
            assert len(image.get("alt", "")) > 20 and image["src"].startswith("data:image/png;base64,"), path.name
        for href in page.links:
            assert not href.startswith(("http:", "https:", "//")), href
            target = href.split("#")[0]
            if target:
                assert (site / target).exists(), (path.name, href)
        assert not re.search(r"""<(script|iframe)\b""", text, re.IGNORECASE), path.name
        assert "No description has been provided" not in text, path.name  # notebook figures carry their alt text


def test_index_states_verdicts_rule_caveats_and_links_every_model(report):
    site = report.parent
    text = report.read_text()
    summary = Results(site / "results").summary
    assert summary["claims"] and all(c["verdict"] in ("reproduced", "not reproduced", "inconclusive")
                                     for c in summary["claims"])
    assert "Verdict rule" in text and "Caveats" in text and "1-NN" in text and 'class="failed"' not in text
    assert text.count("<figcaption>Bands: mostly fractured") == 2  # each summary figure says what it draws
    models = [m for m in summary["models"] if m["results"]]
    model_pages = sorted(site.glob("model--*.html"))
    assert len(model_pages) == len(models) == 4
    for m in models:
        assert f'href="model--{m["id"]}.html"' in text
    for page in model_pages:
        parsed = _parse(page)  # each page names its model in the heading and its accuracies below it
        label = next(m["label"] for m in models if page.name == f'model--{m["id"]}.html')
        assert parsed.title == label and "accuracy" in page.read_text().split("</h1>", 1)[1].split("</p>", 1)[0].lower()
    table = (site / "05_summary_table.html").read_text()
    assert 'href="model--standard-s0.html"' in table
    assert "Attack sample size: robust accuracy is" in table  # how precise the table's columns are, under it
    verdicts = (site / "03_robustness.html").read_text()
    assert "samples with k* &gt;= 2 equals" in verdicts and "k<em>" not in verdicts  # "*" is no emphasis
    counts = summary["counts"]
    assert f"{counts['failed']} of {counts['tasks']} tasks failed" in text and 'href="results/evidence.csv"' in text
    for claim in summary["claims"]:  # a verdict that does not survive its controls says so in the headline
        assert f"{claim['title']}: {claim['verdict']}{', ' + claim['qualifier'] if claim['qualifier'] else ''}." \
            in text.replace("&#39;", "'")
    for name in ("03_robustness", "04_generalisation"):  # the verdict pages carry the caveats too
        page = (site / f"{name}.html").read_text()
        assert "Caveats" in page and "Multiple tests" in page and "results/evidence.csv" in page


def test_figure_two_features_and_kstar_come_from_the_same_model(report):
    results = Results(report.parent / "results")
    for model_id in results.summary["compare"]:
        feats = results.features(model_id)
        res = results.kstar(model_id)
        assert feats.meta["model"] == model_id
        assert np.array_equal(np.asarray(res.labels, dtype=str), feats.label_names())
        from kstar_utils import compute_kstar

        assert np.array_equal(compute_kstar(feats.features, feats.label_names()).kstar, res.kstar)


def test_gallery_renders_for_a_zoo_model(report):
    page = (report.parent / "model--pgd-linf-0.1-s0.html").read_text()
    assert "What splits a concept" in page
    assert page.count("<img") == 2
    # a short heading (the label), the accuracies with their intervals on the line below it
    assert "<h1>PGD Linf eps=0.1, seed 0</h1>" in page
    assert re.search(r'<p class="subtitle">Clean accuracy \(digits/test\) [0-9.]+ \[[0-9.]+, [0-9.]+\]; Linf robust '
                     r'accuracy', page)
    assert "<h2>k* distribution of every concept (digits/test)</h2>" in page  # what the figures show, named
    general = (report.parent / "model--width8-s0.html").read_text()
    assert re.search(r"mean over the \d shifted sets: accuracy [0-9.]+, Gamma&#39; -?[0-9.]+", general)
    assert "near chance</th>" in general and "accuracy within 0.1 of chance (0.10: one over the set&#39;s classes)" in general
    assert "ties share a rank and are listed by clean accuracy" in (report.parent / "03_robustness.html").read_text()


def test_report_folder_is_the_tools_own(report, env, tmp_path):
    site = report.parent
    owned = json.loads((site / MANIFEST).read_text())["files"]
    assert "index.html" in owned and "results/summary.json" in owned
    foreign = tmp_path / "s"
    (foreign / "executed").mkdir(parents=True)
    (foreign / "thesis.html").write_text("x")
    (foreign / "executed" / "log.txt").write_text("y")
    with pytest.raises(ReportFolderError, match="holds files kstar did not write .*thesis.html.*--force"):
        build_report("smoke", foreign, scheduler="inprocess", progress=False)
    assert (foreign / "thesis.html").read_text() == "x" and (foreign / "executed" / "log.txt").read_text() == "y"
    with pytest.raises(ReportFolderError, match="is a file"):
        build_report("smoke", foreign / "thesis.html", scheduler="inprocess", progress=False)


def test_a_report_folder_may_hold_another_report_in_a_sub_folder(tmp_path):
    """reports/fashion beside the default report in reports/: each folder is its own report's, neither is foreign."""
    from kstar_utils.report.publish import ReportFolder

    def publish(folder: Path, page: str) -> None:
        with ReportFolder(folder).staging() as stage:
            (stage / page).write_text(f"<p>{page}</p>\n")

    outer, inner = tmp_path / "reports", tmp_path / "reports" / "fashion"
    publish(outer, "index.html")
    inner.mkdir()
    publish(inner, "index.html")
    publish(outer, "summary.html")  # the outer report replaced: the nested one is neither foreign nor removed
    assert not (outer / "index.html").exists() and (outer / "summary.html").exists()
    assert (inner / "index.html").read_text() == "<p>index.html</p>\n"
    assert set(ReportFolder(outer).owned()) == {"summary.html"}
    (inner / "notes.txt").write_text("mine")  # a foreign file inside the nested report is that report's concern
    ReportFolder(outer).check()
    with pytest.raises(ReportFolderError, match="notes.txt"):
        ReportFolder(inner).check()


def test_a_crafted_file_list_cannot_delete_outside_the_folder_or_an_edited_page(tmp_path):
    """The manifest is read from disk (and committed to git): its entries are checked, and a page is only removed
    when it is still the file kstar wrote."""
    import json

    from kstar_utils.plumbing import sha256_file
    from kstar_utils.report.publish import ReportFolder

    def publish(folder: Path, *pages: str) -> None:
        with ReportFolder(folder).staging() as stage:
            for page in pages:
                (stage / page).write_text(f"<p>{page}</p>\n")

    out, precious = tmp_path / "reports", tmp_path / "precious.txt"
    precious.write_text("keep")
    publish(out, "index.html")
    manifest = out / MANIFEST
    record = json.loads(manifest.read_text())
    for bad in ("../precious.txt", str(precious)):
        manifest.write_text(json.dumps({**record, "files": {**record["files"], bad: sha256_file(precious)}}))
        with pytest.raises(ReportFolderError, match="outside its folder"):
            publish(out, "index.html")
        assert precious.read_text() == "keep"
    manifest.write_text(json.dumps(record))
    publish(out, "index.html", "old.html", "edited.html")
    (out / "edited.html").write_text("<p>my notes</p>")  # the user's edit: no longer the file kstar wrote
    publish(out, "index.html")
    assert not (out / "old.html").exists() and (out / "edited.html").read_text() == "<p>my notes</p>"
    with pytest.raises(ReportFolderError, match="edited.html"):  # and from now on it is foreign
        ReportFolder(out).check()


def test_a_failed_report_leaves_the_previous_one_intact(report, env, monkeypatch):
    site = report.parent
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    import kstar_utils.report as report_module

    def broken(*args, **kwargs):
        raise RuntimeError("a notebook broke")

    monkeypatch.setattr(report_module, "render_notebook_page", broken)
    with pytest.raises(RuntimeError, match="a notebook broke"):
        build_report("smoke", site, scheduler="inprocess", progress=False)
    after = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert after == before  # no staging folder left, no page changed


def _screenshot(page: Path, png: Path, profile: Path) -> np.ndarray:
    from PIL import Image

    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=1000,5000", f"--screenshot={png}", page.as_uri()]
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


PAYLOADS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>', "&lt;b&gt;entity", "' onmouseover='x"]


def test_a_users_yaml_with_hostile_labels_and_class_names_renders_escaped(env, tmp_path, monkeypatch):
    """RobustBench (a local model_dir) and OpenCLIP (a local config and checkpoint) on local data, from a user's YAML
    whose title, labels and class names hold script, attribute and entity payloads."""
    import open_clip
    import torch
    import yaml
    from fixtures_data import TINY_CLIP, pyautoattack_resnet18, write_cifar10, write_mnist_like

    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)  # format, not bytes
    (tmp_path / "models" / "cifar10" / "Linf").mkdir(parents=True)
    (tmp_path / "models" / "cifar10" / "Linf" / "Addepalli2021Towards_RN18.pt").symlink_to(pyautoattack_resnet18())
    names = [f"class{i} {PAYLOADS[i % len(PAYLOADS)]}" for i in range(10)]
    write_cifar10(tmp_path / "cifar", n_test=40, names=names)
    write_mnist_like(tmp_path / "mnist", n_test=40)
    config = tmp_path / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), tmp_path / "tiny-clip.pt")
    profile = tmp_path / "mine.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "mine", "title": f"my models {PAYLOADS[0]}", "description": PAYLOADS[1],
        "robustbench": {"dataset": "cifar10", "data_root": str(tmp_path / "cifar"), "per_class": 4,
                        "model_dir": str(tmp_path / "models"),
                        # pyautoattack's checkpoint sits in this zoo slot: it is standard-trained, so say so
                        "models": [{"name": "Addepalli2021Towards_RN18", "threat_model": "Linf",
                                    "label": f"ResNet-18 {PAYLOADS[1]} {PAYLOADS[2]}",
                                    "clean_accuracy": 0.9, "robust_accuracy": 0.0}]},
        "openclip": {"datasets": ["mnist"], "data_root": str(tmp_path / "mnist"), "per_class": 4,
                     "models": [{"name": "tiny-clip", "pretrained": str(tmp_path / "tiny-clip.pt"),
                                 "model_config": str(config), "label": f"tiny {PAYLOADS[3]} {PAYLOADS[0]}"}]},
        "compare": ["Addepalli2021Towards_RN18/Linf"],
        "compute": {"bootstrap": 50},
    }))
    index = build_report(profile, tmp_path / "site", scheduler="inprocess", progress=False)
    site = index.parent
    results = Results(site / "results")
    robustness = results.table("robustness")
    assert robustness.loc[0, "robust_accuracy"] == 0.0 and robustness.loc[0, "clean_accuracy"] == 0.9
    assert len(results.kstar("Addepalli2021Towards_RN18/Linf").kstar) == 40
    assert list(results.table("generalisation")["data"]) == ["mnist/test"]
    pages = sorted(site.glob("*.html"))
    assert len(pages) >= 8
    for path in pages:
        text = path.read_text()
        page = _Tags()
        page.feed(text)
        assert "script" not in page.tags, path.name  # no payload became an element
        assert not [a for a in page.attributes if a.startswith("on")], path.name  # nor an event handler
        assert all(src.startswith("data:image/png;base64,") for src in page.image_sources), path.name
        assert "<b>entity" not in text and "&lt;b&gt;entity" not in text, path.name  # the entity stays literal
    joined = "".join(p.read_text() for p in pages)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in joined  # shown, as text
    assert "&amp;lt;b&amp;gt;entity" in joined


def test_footer_parameters_read_as_prose_not_python_reprs():
    from kstar_utils.report.render import plain

    assert plain({"Linf": 0.1, "L2": 0.5}) == "Linf 0.1, L2 0.5"
    assert plain(["noise", "blur"]) == "noise, blur" and plain((0.02, 0.035)) == "0.02, 0.035"
    assert plain({"compute": 0, "training": [0, 1, 2]}) == "compute 0, training 0, 1, 2"
    assert plain([]) == "none" and plain(0.100) == "0.1" and plain("x") == "x"


def test_footer_commit_is_dirty_only_for_changes_to_the_code(tmp_path):
    """Rebuilding a committed report in place changes the report, not the code that made it."""
    from kstar_utils.report.render import git_commit

    repo = tmp_path / "repo"
    (repo / "kstar_utils").mkdir(parents=True)
    (repo / "reports").mkdir()
    (repo / "kstar_utils" / "plots.py").write_text("x = 1\n")
    (repo / "reports" / "index.html").write_text("<p>old</p>\n")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    clean = git_commit(repo, ["kstar_utils"])
    assert re.fullmatch(r"[0-9a-f]{12}", clean)
    (repo / "reports" / "index.html").write_text("<p>rebuilt</p>\n")
    assert git_commit(repo, ["kstar_utils"]) == clean
    (repo / "kstar_utils" / "plots.py").write_text("x = 2\n")
    assert git_commit(repo, ["kstar_utils"]) == f"{clean} (with uncommitted changes to the code)"
    assert git_commit(tmp_path / "nowhere") == "not a git checkout"


def test_footer_names_the_machines_the_models_were_trained_on():
    """A zoo model trained on CPU differs between instruction sets and thread counts: the footer says where."""
    from kstar_utils.plumbing import cpu_rounding
    from kstar_utils.report.render import footer

    summary = {"profile": "p", "trained_on": {"x86_64 AVX512, 2 threads": 59, "not recorded": 1}}
    rows = dict(footer(summary))
    assert rows["models trained on"] == "x86_64 AVX512, 2 threads (59 models); not recorded (1 model)"
    assert "models trained on" not in dict(footer({"profile": "p"}))  # nothing trained, nothing said
    assert re.fullmatch(r"\S+ [A-Z0-9_]+, (1 thread|\d+ threads)", cpu_rounding())


def test_tables_have_readable_headers_no_negative_zero_and_explain_the_dash():
    import pandas as pd

    from kstar_utils.report.render import MISSING, readable_header, table_html

    assert readable_header("gamma_prime_lo") == "Gamma' 95% lo" and readable_header("gamma") == "Gamma"
    assert readable_header("clean_accuracy_hi") == "clean accuracy 95% hi"
    assert readable_header("latent_1nn_accuracy") == "latent 1-NN accuracy"
    assert readable_header("robust_accuracy_Linf") == "robust accuracy Linf" and readable_header("model") == "model"
    html = str(table_html(pd.DataFrame({"gamma_prime": [-0.0001, 0.25], "robust_accuracy_L2": [0.5, float("nan")]})))
    assert "<th>Gamma&#39;</th>" in html or "<th>Gamma'</th>" in html
    assert "-0.000" not in html and ">0.000<" in html and ">0.250<" in html
    assert f"{MISSING}: not measured for that row" in html
    assert "not measured" not in str(table_html(pd.DataFrame({"a": [1.0]})))


def test_tables_align_words_left_and_numbers_right():
    import pandas as pd

    from kstar_utils.report.render import table_html

    frame = pd.DataFrame({"model": ["standard-s0", "pgd-l2-0.1-s0"], "gamma": [0.1, -0.2],
                          "p": ["< 0.001", "0.035"], "Gamma' [95% CI]": ["0.17 [0.04, 0.31]", "n/a"],
                          "test": ["main", "partial | clean accuracy"]})
    html = str(table_html(frame))
    heads = re.findall(r"<th( class=\"text\")?>([^<]*)</th>", html)
    assert [(name, bool(cls)) for cls, name in heads] == [
        ("model", True), ("Gamma", False), ("p", False), ("Gamma&#39; [95% CI]", False), ("test", True)]
    assert '<td class="text">partial | clean accuracy</td>' in html and "<td>0.17 [0.04, 0.31]</td>" in html


def test_table_one_shows_each_coefficient_with_its_interval_in_one_cell(tmp_path):
    import pandas as pd

    from kstar_utils.report.notebook import table_one

    (tmp_path / "summary.json").write_text(json.dumps({"models": []}))
    pd.DataFrame({"model": ["a"], "label": ["A, seed 0"], "gamma": [0.349], "gamma_lo": [0.228], "gamma_hi": [0.479],
                  "gamma_prime": [-0.0001], "gamma_prime_lo": [-0.2], "gamma_prime_hi": [0.1],
                  "fractured": [2], "overlapped": [8], "clustered": [0],
                  "clean_accuracy": [0.9]}).to_csv(tmp_path / "summary_table.csv", index=False)
    table = table_one(Results(tmp_path))
    assert list(table.columns) == ["model", "Gamma [95% CI]", "Gamma' [95% CI]",
                                   "concepts fractured / overlapped / clustered", "clean_accuracy"]
    assert table.iloc[0, 1] == "0.35 [0.23, 0.48]" and table.iloc[0, 2] == "0.00 [-0.20, 0.10]"
    assert table.iloc[0, 3] == "2 / 8 / 0"
    pd.read_csv(tmp_path / "summary_table.csv").assign(robust_accuracy_Linf=0.04).to_csv(
        tmp_path / "summary_table.csv", index=False)
    pd.DataFrame({"model": ["a"], "threat_model": ["Linf"], "eval_eps": [0.1]}).to_csv(tmp_path / "robustness.csv",
                                                                                       index=False)
    table = table_one(Results(tmp_path))  # counts out of ~100 attacked images: two decimals, the budget in the header
    assert table["robust accuracy Linf (eps 0.1)"].tolist() == ["0.04"]


def test_leaderboards_and_evidence_tables_keep_intervals_and_adjusted_p_beside_their_values(tmp_path):
    import pandas as pd

    from kstar_utils.report.notebook import evidence_table, threat_model_tables

    (tmp_path / "summary.json").write_text(json.dumps({"models": []}))
    rows = [{"model": m, "label": m.upper(), "threat_model": "L2", "eval_eps": 0.5, "clean_accuracy": 0.9,
             "robust_accuracy": r, "robust_accuracy_lo": r - 0.1, "robust_accuracy_hi": r + 0.1,
             "gamma_prime": g, "gamma_prime_lo": g - 0.2, "gamma_prime_hi": g + 0.2, "latent_1nn_accuracy": 0.9,
             "fractured": 1, "overlapped": 2, "clustered": 3} for m, r, g in (("a", 0.2, 0.1), ("b", 0.5, -0.3))]
    pd.DataFrame(rows).to_csv(tmp_path / "robustness.csv", index=False)
    [(tm, eps, board)] = threat_model_tables(Results(tmp_path))
    assert (tm, eps) == ("L2", 0.5) and list(board["model"]) == ["B", "A"]  # ranked by robust accuracy
    assert list(board.columns) == ["rank (ties share one)", "model", "clean_accuracy", "robust accuracy (L2) [95% CI]",
                                   "Gamma' [95% CI]", "latent_1nn_accuracy",
                                   "concepts fractured / overlapped / clustered"]
    assert board.iloc[0, 3] == "0.50 [0.40, 0.60]" and board.iloc[0, 4] == "-0.30 [-0.50, -0.10]"
    tied = [dict(r, model=m, label=m.upper(), robust_accuracy=0.5, clean_accuracy=c)
            for r, (m, c) in zip(rows * 2, (("c", 0.8), ("d", 0.95), ("e", 0.9), ("f", 0.7)))]
    pd.DataFrame(tied + [dict(rows[0], robust_accuracy=0.1)]).to_csv(tmp_path / "robustness.csv", index=False)
    [(_, _, board)] = threat_model_tables(Results(tmp_path))
    assert list(board["rank (ties share one)"]) == [1, 1, 1, 1, 5]  # equal robust accuracy, equal rank
    assert list(board["model"][:4]) == ["D", "E", "C", "F"]  # and, among ties, the better clean accuracy first
    pd.DataFrame([{"claim": "robustness", "threat_model": "L2", "test": "Spearman", "verdict": "inconclusive",
                   "rho": -0.3, "p_value": 0.0004, "n": 24, "p_holm": 0.0012}]).to_csv(tmp_path / "evidence.csv",
                                                                                     index=False)
    table = evidence_table(Results(tmp_path), "robustness")
    assert list(table.columns) == ["threat_model", "test", "verdict", "rho", "p", "p (Holm)", "n"]
    assert table.iloc[0]["p"] == "< 0.001" and table.iloc[0]["p (Holm)"] == "0.001"


def test_notebook_figures_are_displayed_with_their_alt_text():
    from kstar_utils import plots
    from kstar_utils.report.notebook import figure_png_with_alt

    fig = plots.framework_schematic()
    data, metadata = figure_png_with_alt(fig)
    assert data.startswith(b"\x89PNG") and metadata == {"alt": plots.alt_text(fig), "width": plots.DISPLAY_WIDTH_PX}


def test_a_figure_is_shown_before_its_caption_and_closed(monkeypatch):
    import IPython.display
    import matplotlib.pyplot as plt
    import pandas as pd

    from kstar_utils import plots
    from kstar_utils.report import notebook

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects: shown.extend(objects))
    table = pd.DataFrame({"accuracy": [0.2, 0.5, 0.7, 0.9], "gamma_prime": [0.4, 0.1, -0.2, -0.6],
                          "model": list("abcd")})
    fig = plots.gamma_regions(table, "accuracy", n_boot=100)
    notebook.show_figure_caption(fig)
    assert shown[0] is fig and "Bands: mostly fractured" in shown[1].data
    assert not plt.fignum_exists(fig.number)  # the inline backend will not show it a second time


def test_each_threat_models_panel_names_its_own_budget(tmp_path):
    import json

    import pandas as pd

    from kstar_utils.report.notebook import robust_accuracy_label

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"models": []}))
    pd.DataFrame({"threat_model": ["Linf", "L2"], "eval_eps": [0.1, 0.5], "attack": ["apgd-ce+apgd-t"] * 2}).to_csv(
        folder / "robustness.csv", index=False)
    results = Results(folder)
    assert robust_accuracy_label(results, "L2") == "L2 robust accuracy (apgd-ce+apgd-t, eps = 0.5)"
    assert robust_accuracy_label(results, "Linf") == "Linf robust accuracy (apgd-ce+apgd-t, eps = 0.1)"


def test_open_results_never_computes_into_a_mistyped_results_dir(tmp_path):
    """A results_dir without summary.json (a typo) or holding another profile's results is an error naming the fix;
    nothing is computed or created."""
    import json

    from kstar_utils.errors import KStarInputError
    from kstar_utils.report.notebook import open_results

    missing = tmp_path / "resuls"
    with pytest.raises(KStarInputError, match="holds no summary.json"):
        open_results("default", missing)
    assert not missing.exists()
    other = tmp_path / "smoke_results"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"profile": "smoke", "models": []}))
    with pytest.raises(KStarInputError, match="profile 'smoke', not 'default'"):
        open_results("default", other)
    assert open_results("smoke", other).summary["profile"] == "smoke"


def test_markdown_values_are_shown_literally():
    """A caption's "k*" closed its italics early; a label a_b_c would have turned into emphasis."""
    from kstar_utils.report.notebook import markdown_escape

    assert markdown_escape("the k* figures") == "the k\\* figures"
    assert markdown_escape("a_b_c [x] <b>") == "a\\_b\\_c \\[x\\] &lt;b&gt;"
    assert markdown_escape("Gamma' and AutoAttack's") == "Gamma&#x27; and AutoAttack&#x27;s"  # entities intact
