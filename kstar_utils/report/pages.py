"""The pages that are not notebooks: one page per model and the index.

Per-model pages are rendered straight from the package (the same functions ``model.ipynb`` calls in JupyterLab), not
through a papermill kernel each: a report has dozens of models, and a kernel start per page would cost more than the
rest of the report.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..evidence import format_number
from ..pipeline.claims import shifted_set_means
from .notebook import Results, model_links, table_one
from .render import MISSING, alt_text, format_value, png, table_html, write_page


def model_page_name(model_id: str) -> str:
    from ..pipeline.aggregate import slug

    return f"model--{slug(model_id)}.html"


def _ci(value: float, lo: float, hi: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return format_value(value, digits)
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def model_title(results: Results, model_id: str) -> str:
    """The model's page title: its label alone (the accuracies follow in :func:`model_accuracies`, below the heading,
    where a long line of numbers does not make a three-line H1)."""
    return str(results.model(model_id)["label"])


def model_accuracies(results: Results, model_id: str) -> str:
    """The model's accuracies with their 95% intervals, one clause each ("" when none was measured): on its clean
    evaluated set (named alike for every model), under attack, and for a model evaluated on shifted sets, the mean
    accuracy and mean Gamma' over them (the quantities its generalisation test uses)."""
    parts = []
    clean_set = _evaluated_set(results, model_id)
    rob = results.table("robustness")
    rows = rob[rob["model"] == model_id] if not rob.empty else rob
    gen = results.table("generalisation")
    own = gen[gen["model"] == model_id] if not gen.empty else gen
    if len(rows):
        r = rows.iloc[0]
        parts.append(f"clean accuracy{clean_set} "
                     f"{_ci(r['clean_accuracy'], r['clean_accuracy_lo'], r['clean_accuracy_hi'])}")
        for _, r in rows.iterrows():
            eps = pd.to_numeric(r.get("eval_eps"), errors="coerce")
            budget = f" (eps {float(eps):g})" if pd.notna(eps) else ""
            parts.append(f"{r['threat_model']} robust accuracy{budget} "
                         f"{_ci(r['robust_accuracy'], r['robust_accuracy_lo'], r['robust_accuracy_hi'])}")
    elif len(own):
        r = own.iloc[0]
        name = "clean accuracy" if "shift" in own and r["shift"] == "clean" else "accuracy"
        parts.append(f"{name} ({r['data']}) {_ci(r['accuracy'], r['accuracy_lo'], r['accuracy_hi'])}")
    means = shifted_set_means(own) if len(own) else pd.DataFrame()
    if not means.empty:
        count = int((own["shift"] != "clean").sum())
        parts.append(f"mean over the {count} shifted sets: accuracy {format_number(means['accuracy'].iloc[0])}, "
                     f"Gamma' {format_number(means['gamma_prime'].iloc[0])}")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]


def _evaluated_set(results: Results, model_id: str) -> str:
    """" (digits/test)": the data set of a model's first (clean) k* result, which its page's figures show."""
    entries = results.model(model_id).get("results") or []
    return f" ({entries[0]['data']})" if entries else ""


def model_sections(results: Results, model_id: str) -> list[dict]:
    """The figures and tables of one model's page (also shown by ``model.ipynb``)."""
    from .. import plots

    res = results.kstar(model_id)
    sections = []
    on = _evaluated_set(results, model_id)
    fig = plots.kstar_distributions(res, title=results.model(model_id)["label"] + on)
    sections.append({"heading": f"k* distribution of every concept{on}", "png": png(fig),
                     "alt": alt_text(fig, f"Per-class k* distributions of {model_id}"),
                     "text": "Each row is a concept (class); fractured concepts have their mass at low k*."})
    table = res.per_class.copy()
    sections.append({"heading": f"Per-class statistics{on}", "table": table_html(table)})
    gen = results.table("generalisation")
    rows = gen[gen["model"] == model_id] if not gen.empty else gen
    if len(rows) > 1:
        cols = [c for c in ("data", "accuracy", "accuracy_lo", "accuracy_hi", "gamma", "gamma_prime",
                            "gamma_prime_lo", "gamma_prime_hi", "latent_1nn_accuracy") if c in rows.columns]
        table = rows[cols].copy()
        # each set's own chance (1 / its classes): an encoder may be evaluated on CIFAR-10 and CIFAR-100 alike
        chance = np.array([_chance(results, model_id, d, 1.0 / len(res.per_class)) for d in table["data"]])
        near = plots.near_chance(table["accuracy"], chance)
        table["near chance"] = np.where(table["accuracy"].isna(), MISSING, np.where(near, "yes", "no"))
        levels = ", ".join(format_number(c) for c in dict.fromkeys(chance))
        sections.append({"heading": "On every evaluated data set", "table": table_html(table),
                         "text": f"\"near chance\": accuracy within {plots.CHANCE_MARGIN:g} of chance "
                                 f"({levels}: one over the set's classes), where "
                                 "Gamma' describes a model that has not learned the task (marked in the figures "
                                 "too)."})
    partners = results.gallery_partners(model_id)
    images = _images_or_none(results, model_id)
    if images is not None and partners:
        fig = plots.fracture_gallery(images, res.labels, None, res,
                                     nearest=lambda _f, _y, queries, _m: [partners[int(q)] for q in queries])
        sections.append({"heading": f"What splits a concept: the samples with the smallest k*{on}", "png": png(fig),
                         "alt": alt_text(fig, f"Evaluated images of {model_id} with the smallest k*, each beside its "
                                              "nearest neighbour from another class"),
                         "text": "For the three classes with the largest skew (the most fractured first; each panel "
                                 "names its class's pattern, which may be overlapped or clustered when few classes "
                                 "are fractured), the evaluated images with the smallest k* (left of each pair) "
                                 "beside their nearest neighbour from another class (right). Where more images share "
                                 "the smallest k* than a row holds (often many at k* = 1), the first in the "
                                 "evaluated set's order are shown, so the row is an example, not the worst case."})
    elif images is None:
        sections.append({"heading": "What splits a concept", "text": "The evaluated images are not on this "
                         "machine (the data set was not found), so the gallery of fractured samples is not shown."})
    return sections


def _images_or_none(results: Results, model_id: str):
    """The evaluated images, or None where the data set is not on disk here (a report copied elsewhere)."""
    from ..errors import KStarError

    try:
        return results.images(model_id)
    except (KStarError, OSError):
        return None


def _chance(results: Results, model_id: str, data_id: str, default: float) -> float:
    """Chance accuracy on one evaluated set, 1 / its classes (``default`` where its k* result is missing)."""
    try:
        return results.chance(model_id, data_id)
    except KeyError:
        return default


def render_model_page(results_dir: str | os.PathLike, model_id: str, out_dir: str | os.PathLike) -> str:
    """Write the model's page (``model_page_name(model_id)``) into ``out_dir``; returns its file name."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    results = Results(results_dir)
    name = model_page_name(model_id)
    res = results.kstar(model_id)
    counts = res.pattern_counts
    intervals = getattr(res, "intervals", None) or {}
    gp = intervals.get("gamma_prime")
    summary = (f"Gamma = {format_number(res.gamma_true, 3)}, Gamma' = {format_number(res.gamma_approx, 3)}"
               + (f" (95% bootstrap interval {format_number(gp[0])} to {format_number(gp[1])})" if gp else "")
               + f"; {counts['Fractured']} fractured, {counts['Overlapped']} overlapped, {counts['Clustered']} "
               f"clustered concepts; {len(res.kstar)} evaluated samples; k* computed {res.method}.")
    files = [(f"results/{e['file']}", f"k* result on {e['data']} (JSON)") for e in results.model(model_id)["results"]]
    write_page(Path(out_dir) / name, "model.html.j2", model_title(results, model_id), results.summary,
               sources=files + [("results/summary_table.csv", "Table 1 (CSV)")], lead=summary,
               accuracies=model_accuracies(results, model_id), sections=model_sections(results, model_id))
    return name


def index_figures(results: Results) -> list[dict]:
    """The summary figures of the index: Gamma' against robustness and against generalisation."""
    from .. import plots

    figures = []
    rob = results.table("robustness")
    if not rob.empty:
        fig = plots.gamma_regions(rob, "robust_accuracy", hue="threat_model", label=None,  # names: on page 03
                                  **plots.seed_grouping(rob),
                                  xlabel=results.summary.get("x_labels", {}).get("robustness", "robust accuracy"),
                                  title="Gamma' against robustness")
        figures.append({"alt": alt_text(fig, "Gamma' of each robust model against its robust accuracy, on the "
                                             "fractured/overlapped/clustered regions"),
                        "caption": plots.caption(fig), "png": png(fig)})
    gen = results.table("generalisation")
    means = shifted_set_means(gen) if not gen.empty else pd.DataFrame()
    if not means.empty:  # the figure of the test the headline verdict rests on
        fig = plots.gamma_regions(means, "accuracy", label="label", **plots.seed_grouping(means),
                                  xlabel="mean accuracy on the shifted test sets",
                                  title="Gamma' against generalisation: the main test (means over the shifted sets)")
        figures.append({"alt": alt_text(fig, "Each model's mean Gamma' over the shifted sets against its mean "
                                             "accuracy there"), "caption": plots.caption(fig), "png": png(fig)})
    elif not gen.empty:
        fig = plots.gamma_regions_by(gen, "accuracy", by="set", **plots.seed_grouping(gen),
                                     xlabel=results.summary.get("x_labels", {}).get("generalisation", "accuracy"),
                                     title="Gamma' against generalisation, one panel per data set")
        figures.append({"alt": alt_text(fig, "Gamma' of each model on each data set against its accuracy there"),
                        "caption": plots.caption(fig), "png": png(fig)})
    return figures


def render_index(results_dir: str | os.PathLike, out_dir: str | os.PathLike, pages: list[tuple[str, str]],
                 model_pages: list[tuple[str, str]]) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    results = Results(results_dir)
    s = results.summary
    sources = [("results/summary.json", "summary and claims (JSON)"), ("results/summary_table.csv", "Table 1 (CSV)"),
               ("results/robustness.csv", "robustness table (CSV)"),
               ("results/generalisation.csv", "generalisation table (CSV)"),
               ("results/evidence.csv", "every correlation behind the verdicts (CSV)"),
               ("results/failed.csv", "failed tasks (CSV)")]
    return write_page(Path(out_dir) / "index.html", "index.html.j2", s["title"], s, sources=sources,
                      back_to_index=False, threshold=s.get("threshold", 0.5), description=s.get("description", ""),
                      claims=s.get("claims", []), verdict_rule=s.get("verdict_rule", ""), caveats=s.get("caveats", []),
                      failed=s.get("failed", []), counts=s.get("counts"), figures=index_figures(results),
                      table=table_html(table_one(results), model_links(results)),
                      pages=pages, model_pages=model_pages)
