"""Reports: profiles, the results they need, papermill runs of the notebooks, HTML pages and the index.

A report is made in two steps, in the spirit of CLIP_benchmark (results first, then aggregation and figures):

1. :func:`collect` computes everything a profile needs into a results folder (cached: trained models, features and
   k* are reused): ``robustness.csv`` (Figure 3), ``generalisation.csv`` (Figure 4), ``summary_table.csv``
   (Table 1), ``kstar/<key>.json`` (every k* result), ``features/<key>/`` (Figure 2's two models) and
   ``manifest.json``. The built-in profiles (default, smoke, fashion) run the offline study; the paper profile (or a
   user's YAML with the same sections) extracts RobustBench and OpenCLIP features.
2. :func:`render` executes each notebook in ``notebooks/`` with papermill (parameters: profile, results folder,
   and for the per-model notebook the model), keeps the executed notebooks, converts them to HTML without code input
   and with images embedded, and writes ``index.html`` linking every page with the summary figure and table. No page
   loads anything from the network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from . import metrics
from .kstar import KStarResult, compute_kstar
from .plumbing import atomic_write_text, write_json

NOTEBOOKS = (
    ("01_framework", "Figure 1: the k* framework"),
    ("02_compare_models", "Figure 2: two models compared by k* distributions, t-SNE and UMAP"),
    ("03_robustness", "Figure 3: Gamma' against robustness"),
    ("04_generalisation", "Figure 4: Gamma' against generalisation"),
    ("05_summary_table", "Table 1: summary of the models"),
)
PER_MODEL_NOTEBOOK = "model"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


# ----------------------------------------------------------------------------------------------------------- profiles
def profile_dir() -> Path:
    return Path(__file__).parent / "profiles"


def load_profile(profile: str | os.PathLike | dict) -> dict:
    """A profile by name (default, smoke, fashion, paper) or from a user's YAML file."""
    if isinstance(profile, dict):
        return profile
    path = Path(profile)
    if not path.suffix:
        path = profile_dir() / f"{profile}.yaml"
        if not path.exists():
            names = sorted(p.stem for p in profile_dir().glob("*.yaml"))
            raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(names)} or a YAML file.")
    elif not path.exists():
        raise FileNotFoundError(f"profile file {path} does not exist.")
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("name", path.stem)
    data.setdefault("title", f"k* report: {data['name']}")
    if not any(k in data for k in ("study", "robustbench", "openclip", "torchvision")):
        raise ValueError(f"profile {path} names no models: give 'study', 'robustbench', 'openclip' or 'torchvision'.")
    return data


def notebooks_dir() -> Path:
    """The notebooks: $KSTAR_NOTEBOOKS, else the repository's notebooks/ beside the package."""
    env = os.environ.get("KSTAR_NOTEBOOKS")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1] / "notebooks")
    for c in candidates:
        if (c / f"{NOTEBOOKS[0][0]}.ipynb").exists():
            return c
    raise FileNotFoundError("the report notebooks were not found; set KSTAR_NOTEBOOKS to the notebooks/ folder.")


def default_results_dir(profile: dict) -> Path:
    return Path(os.environ.get("KSTAR_RESULTS", Path.home() / ".cache" / "kstar" / "results")) / profile["name"]


# ------------------------------------------------------------------------------------------------------------ collect
def _row(res: KStarResult) -> dict:
    counts = res.pattern_counts
    return {"gamma": res.gamma_true, "gamma_prime": res.gamma_approx, "fractured": counts["Fractured"],
            "overlapped": counts["Overlapped"], "clustered": counts["Clustered"]}


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@=-]+", "_", key)


def _collect_study(profile: dict, out: Path, progress: bool) -> dict:
    """The built-in study's results, plus the penultimate features of Figure 2's two models."""
    from .datasets import subsample_per_class
    from .extract import ExtractedFeatures
    from .zoo.data import class_names, load_tensors
    from .zoo.source import find_spec
    from .zoo.study import ensure_trained, penultimate, robustness_points, run_study
    from .zoo.train import default_zoo_dir

    root = profile.get("data_root")
    study = run_study(profile["study"], data_root=root, progress=progress)
    study.save(out / "study")
    p = study.profile
    for key, res in study.kstar.items():
        atomic_write_text(out / "kstar" / f"{_safe(key)}.json", res.to_json())
    rob = study.robustness
    points = robustness_points(rob, p.eval_eps)
    points["clean_accuracy"] = points["model"].map(dict(zip(rob["model"], rob["clean_accuracy"])))
    points = points.merge(rob[["model", "fractured", "overlapped", "clustered"]], on="model")
    points["key"] = points["model"]
    gen = study.generalisation.copy()
    gen["key"] = gen["model"] + "@" + gen["data"]
    table = rob[["model", "training", "gamma", "gamma_prime", "fractured", "overlapped", "clustered",
                 "clean_accuracy"] + [c for c in rob.columns if c.startswith("robust_accuracy_")]
                + ["autoattack_flags"]].copy()

    x_train, y_train = load_tensors(p.dataset, "train", root)
    x_test, y_test = load_tensors(p.dataset, "test", root)
    idx = subsample_per_class(y_test.numpy(), p.kstar_per_class, p.seed)
    compare = profile.get("compare") or list(rob["model"][:2])
    for name in compare:
        model, _, _ = ensure_trained(find_spec(name), default_zoo_dir(), x_train, y_train, progress)
        ExtractedFeatures(penultimate(model, x_test[idx]), y_test[idx].numpy(), list(class_names(p.dataset, root)),
                          {"model": name}).save(out / "features" / _safe(name))
    eps_text = ", ".join(f"{n} eps = {e:g}" for n, e in p.eval_eps.items())
    return {
        "robustness": points, "generalisation": gen, "table": table, "compare": [_safe(c) for c in compare],
        "models": list(rob["model"]), "answer": study.answer, "correlations": study.correlations,
        "robustness_x_label": f"AutoAttack robust accuracy ({eps_text}; {p.attack_version}, "
                              f"{p.attack_samples} test images)",
        "generalisation_x_label": "accuracy on the shifted test set",
        "generalisation_note": "Offline analogue of the OpenCLIP figure: models of different capacity and training-set "
                               "size, each on clean and shifted versions of the test set (noise, blur, rotation, "
                               "contrast).",
        "data": f"{p.dataset} (test split" + (f", {p.kstar_per_class} per class)" if p.kstar_per_class else ")"),
    }


def _collect_models(profile: dict, out: Path, progress: bool) -> dict:
    """RobustBench / OpenCLIP / torchvision sections: extract, compute k*, join the published accuracies."""
    from .accuracy import openclip_zeroshot, robustbench_accuracy
    from .extract import extract

    rows, grows, table_rows, models = [], [], [], []
    compare = []
    rb = profile.get("robustbench")
    if rb:
        acc = robustbench_accuracy()
        for m in tqdm(rb["models"], desc="RobustBench models", disable=not progress):
            key = f"{m['name']}_{m['threat_model']}"
            feats = extract("robustbench", m["name"], rb.get("dataset", "cifar10"), split=rb.get("split", "test"),
                            data_root=rb.get("data_root"), per_class=rb.get("per_class"), threat_model=m["threat_model"],
                            model_dir=rb.get("model_dir"), progress=progress)
            res = compute_kstar(feats.features, feats.label_names(), progress=progress)
            atomic_write_text(out / "kstar" / f"{_safe(key)}.json", res.to_json())
            # Published numbers (RobustBench's model_info) unless the profile gives the model's own: a user's
            # checkpoint in a zoo slot is not the model RobustBench measured.
            hit = acc[(acc["model"] == m["name"]) & (acc["threat_model"] == m["threat_model"])]
            clean = m.get("clean_accuracy", float(hit["clean_accuracy"].iloc[0]) / 100 if len(hit) else np.nan)
            robust = m.get("robust_accuracy", float(hit["autoattack_accuracy"].iloc[0]) / 100 if len(hit) else np.nan)
            label = m.get("label", m["name"])
            rows.append({"model": label, "threat_model": m["threat_model"], "robust_accuracy": robust,
                         "clean_accuracy": clean, **_row(res), "key": _safe(key)})
            table_rows.append({"model": f"{label} ({m['threat_model']})", "gamma": res.gamma_true,
                               "gamma_prime": res.gamma_approx,
                               **{k: v for k, v in _row(res).items() if k not in ("gamma", "gamma_prime")},
                               "clean_accuracy": clean, "robust_accuracy": robust})
            models.append(_safe(key))
            if {"name": m["name"], "threat_model": m["threat_model"]} in (rb.get("compare") or []):
                feats.save(out / "features" / _safe(key))
                compare.append(_safe(key))
    oc = profile.get("openclip")
    if oc:
        zs = openclip_zeroshot()
        for m in tqdm(oc["models"], desc="OpenCLIP models", disable=not progress):
            hit = zs[(zs["model"] == m["name"]) & (zs["pretrained"] == m["pretrained"])]
            label = m.get("label", f"{m['name']} ({m['pretrained']})")
            for ds in oc["datasets"]:
                key = f"{m['name']}_{m['pretrained']}@{ds}"
                feats = extract("openclip", m["name"], ds, split=oc.get("split", "test"), data_root=oc.get("data_root"),
                                per_class=oc.get("per_class"), pretrained=m["pretrained"],
                                model_config=m.get("model_config"), normalize=oc.get("normalize", True),
                                progress=progress)
                res = compute_kstar(feats.features, feats.label_names(), metric="cosine", progress=progress)
                atomic_write_text(out / "kstar" / f"{_safe(key)}.json", res.to_json())
                column = ds.replace("-", "")
                grows.append({"model": label, "data": ds,
                              "accuracy": float(hit[column].iloc[0]) if len(hit) and column in hit else np.nan,
                              "zeroshot_avg38": float(hit["zeroshot_avg38"].iloc[0]) if len(hit) else np.nan,
                              **_row(res), "key": _safe(key)})
                models.append(_safe(key))
    robustness, generalisation = pd.DataFrame(rows), pd.DataFrame(grows)
    if not generalisation.empty:
        per_model = generalisation.groupby("model").agg(gamma=("gamma", "mean"), gamma_prime=("gamma_prime", "mean"),
                                                        zeroshot_avg38=("zeroshot_avg38", "first")).reset_index()
        table_rows += per_model.to_dict(orient="records")
    return {"robustness": robustness, "generalisation": generalisation, "table": pd.DataFrame(table_rows),
            "compare": compare, "models": models, "answer": "", "correlations": {},
            "robustness_x_label": "AutoAttack robust accuracy (RobustBench)",
            "generalisation_x_label": "zero-shot accuracy (open_clip results table)",
            "generalisation_note": "OpenCLIP encoders on several data sets (cosine k* on encode_image embeddings).",
            "data": "see profile"}


def collect(profile: str | os.PathLike | dict, results_dir: str | os.PathLike | None = None,
            progress: bool = True) -> Path:
    """Compute every result of ``profile`` into ``results_dir`` (default: the results cache). Returns the folder."""
    prof = load_profile(profile)
    out = Path(results_dir) if results_dir else default_results_dir(prof)
    out.mkdir(parents=True, exist_ok=True)
    parts = _collect_study(prof, out, progress) if "study" in prof else _collect_models(prof, out, progress)
    for name in ("robustness", "generalisation", "table"):
        file = {"table": "summary_table.csv"}.get(name, f"{name}.csv")
        atomic_write_text(out / file, parts[name].to_csv(index=False))
    manifest = {k: v for k, v in parts.items() if k not in ("robustness", "generalisation", "table")}
    manifest.update(profile=prof["name"], title=prof["title"], threshold=metrics.DEFAULT_THRESHOLD,
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    write_json(out / "manifest.json", manifest)
    return out


def ensure_results(profile: str | dict = "default", results_dir: str | os.PathLike | None = None) -> Path:
    """The results folder of ``profile``, collecting it first when it has no manifest yet (for notebooks)."""
    prof = load_profile(profile)
    out = Path(results_dir) if results_dir else default_results_dir(prof)
    if not (out / "manifest.json").exists():
        collect(prof, out)
    return out


def answer_markdown(manifest: dict) -> str:
    """The study's answer as a Markdown list, one statement (with its numbers) per line."""
    lines = [line for line in manifest.get("answer", "").split("\n") if line.strip()]
    return "**The answer, with the numbers:**\n\n" + "\n".join(f"- {line}" for line in lines) if lines else ""


class Results:
    """Read access to a results folder, for the notebooks."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())

    def table(self, name: str) -> pd.DataFrame:
        path = self.folder / {"table": "summary_table.csv"}.get(name, f"{name}.csv")
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def kstar(self, key: str) -> KStarResult:
        return KStarResult.from_json((self.folder / "kstar" / f"{_safe(key)}.json").read_text())

    def features(self, key: str):
        from .extract import ExtractedFeatures

        return ExtractedFeatures.load(self.folder / "features" / _safe(key))


# ------------------------------------------------------------------------------------------------------------- render
def _strip_remote(text: str) -> str:
    """Drop every <script src=http...> and <link href=http...>: the pages must work offline and load nothing."""
    text = re.sub(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>", "", text, flags=re.I)
    text = re.sub(r"<link[^>]*\bhref=[\"']https?://[^>]*>", "", text, flags=re.I)
    return text


PAGE_CSS = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; max-width: 1150px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; } a.anchor-link { display: none; }
img { max-width: 100%; } .summary-figures img { max-width: 49%; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; } pre { background: #f8f8f8; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.answer { background: #f4f6fb; padding: 0.6em 1em; border-left: 4px solid #4c72b0; }
.meta { color: #777; font-size: 0.9em; } nav { font-size: 0.9em; margin-bottom: 1em; }
"""


def page(title: str, body: str, back_to_index: bool = True) -> str:
    """A complete, self-contained HTML page: our stylesheet inline, nothing loaded from anywhere."""
    nav = '<nav><a href="index.html">&larr; report index</a></nav>' if back_to_index else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head>\n<body>\n{nav}\n{body}\n</body></html>\n")


def to_html(notebook_path: Path, html_path: Path, title: str) -> Path:
    """An executed notebook as a self-contained HTML page: outputs only, images embedded, no remote resources."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="basic")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.embed_images = True
    notebook = nbformat.read(str(notebook_path), as_version=4)
    body, _ = exporter.from_notebook_node(notebook)
    atomic_write_text(html_path, page(title, _strip_remote(body)))
    return html_path


def _ipc_kernel_manager(socket_dir: Path):
    """A kernel manager on local IPC sockets in ``socket_dir``: no TCP port, nothing sent in plain text."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(socket_dir / "kernel"))
            super().__init__(**kwargs)

    return IPCKernelManager


def execute(notebook: Path, output: Path, parameters: dict, cwd: Path) -> Path:
    """Run a notebook with papermill (inline matplotlib backend: Agg would drop every figure), its kernel on IPC
    sockets in a private temporary folder."""
    import tempfile

    import papermill as pm

    previous = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    try:
        with tempfile.TemporaryDirectory(prefix="kstar-kernel-") as sockets:
            pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                                cwd=str(cwd), progress_bar=False, log_output=False,
                                kernel_manager_class=_ipc_kernel_manager(Path(sockets)))
    finally:
        if previous is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = previous
    return output


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _index_page(results: Results, pages: list[tuple[str, str]], model_pages: list[tuple[str, str]]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from . import plots

    m = results.manifest
    figures = []
    robustness = results.table("robustness")
    if not robustness.empty:
        figures.append(_png(plots.gamma_regions(robustness, "robust_accuracy", hue="threat_model",
                                                xlabel=m.get("robustness_x_label"), title="Gamma' against robustness")))
    generalisation = results.table("generalisation")
    if not generalisation.empty:
        figures.append(_png(plots.gamma_regions(generalisation, "accuracy", hue="data", label=None,
                                                xlabel=m.get("generalisation_x_label"),
                                                title="Gamma' against generalisation")))
    table = results.table("table")
    table_html = table.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-", border=0)
    links = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a></li>' for href, title in pages)
    model_links = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(t)}</a></li>' for href, t in model_pages)
    images = "\n".join(f'<img alt="summary figure" src="data:image/png;base64,{b}">' for b in figures)
    answer = ""
    if m.get("answer"):
        items = "".join(f"<li>{html.escape(line)}</li>" for line in m["answer"].split("\n") if line.strip())
        answer = f"<div class='answer'><b>Does Gamma' fall as the models get more robust or more general?</b><ul>{items}</ul></div>"
    body = f"""<h1>{html.escape(m['title'])}</h1>
<p>k* of a sample is the rank of its nearest neighbour from another class; per class its distribution is fractured
(skew &gt; {m['threshold']}, blue), overlapped (red) or clustered (skew &lt; -{m['threshold']}, green). Gamma is the skew
of all samples pooled, Gamma' the mean of per-class skews; lower is better clustered.
Data: {html.escape(str(m.get('data', '')))}.</p>
{answer}
<div class="summary-figures">{images}</div>
<h2>Table 1</h2>
{table_html}
<p class="meta">Also as CSV: <a href="results/summary_table.csv">results/summary_table.csv</a>. A dash: not evaluated
(each robust model is attacked under its own threat model, as on RobustBench's leaderboards). autoattack_flags counts
AutoAttack's own reliability warnings for that model (recorded in the zoo's meta.json), if any.</p>
<h2>Figures</h2><ul>{links}</ul>
<h2>Per-model pages</h2><ul>{model_links}</ul>
<p class="meta">Profile {html.escape(m['profile'])}; results collected {html.escape(m['created'])}. Made by kstar_utils
with papermill and nbconvert; the executed notebooks are in <code>executed/</code>. Every page is self-contained and reads
nothing from the network.</p>"""
    return page(m["title"], body, back_to_index=False)


def render(profile: str | os.PathLike | dict = "default", out: str | os.PathLike = "reports",
           results_dir: str | os.PathLike | None = None, per_model: bool = True, progress: bool = True) -> Path:
    """Collect the profile's results, execute every notebook, and publish HTML pages and index.html in ``out``."""
    prof = load_profile(profile)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    clean_report_dir(out)
    results_path = Path(results_dir).resolve() if results_dir else (out / "results")
    collect(prof, results_path, progress)
    results = Results(results_path)
    source = notebooks_dir()
    executed = out / "executed"
    executed.mkdir(exist_ok=True)
    parameters = {"profile": prof["name"], "results_dir": str(results_path)}
    pages = []
    jobs = [(name, title, parameters) for name, title in NOTEBOOKS]
    if per_model:
        for key in results.manifest.get("models", []):
            jobs.append((f"{PER_MODEL_NOTEBOOK}--{_safe(key)}", f"Model {key}", {**parameters, "model": key}))
    model_pages = []
    for name, title, params in tqdm(jobs, desc="notebooks", disable=not progress):
        template = source / f"{name.split('--')[0]}.ipynb"
        run = execute(template, executed / f"{name}.ipynb", params, source)
        html_name = f"{name}.html"
        to_html(run, out / html_name, title)
        (model_pages if name.startswith(PER_MODEL_NOTEBOOK) else pages).append((html_name, title))
    atomic_write_text(out / "index.html", _index_page(results, pages, model_pages))
    return out / "index.html"


def clean_report_dir(out: str | os.PathLike) -> None:
    """Remove generated pages (not results) before a fresh render."""
    for pattern in ("*.html", "executed"):
        for path in Path(out).glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()

