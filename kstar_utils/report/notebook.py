"""What the report's notebooks call: one line opens the results, a few helpers show them safely.

``results = open_results(profile, results_dir)`` is the first cell of every notebook. With ``results_dir`` (as
``kstar report`` passes it) it only reads; without it (JupyterLab, default parameters) it runs the profile's task grid
in this process (finished tasks are reused from the results store) and aggregates it first.

Notebook outputs become HTML pages, so every string that may come from a user (labels, class names, titles) must be
escaped before it reaches Markdown or HTML: :func:`show_markdown` and :func:`show_table` do that. Importing this
module inside IPython also makes matplotlib figures display with their alt text (:func:`figures_with_alt_text`).
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..evidence import format_number
from ..kstar import KStarResult


class Results:
    """Read access to an aggregated results folder (see :mod:`kstar_utils.pipeline.aggregate`)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.summary = json.loads((self.folder / "summary.json").read_text())

    def table(self, name: str) -> pd.DataFrame:
        """``robustness``, ``generalisation``, ``table`` (Table 1) or ``failed`` as a DataFrame."""
        path = self.folder / {"table": "summary_table.csv"}.get(name, f"{name}.csv")
        try:
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def model(self, model_id: str) -> dict:
        for m in self.summary["models"]:
            if m["id"] == model_id:
                return m
        raise KeyError(f"model {model_id!r} is not in this report; models: "
                       f"{', '.join(m['id'] for m in self.summary['models'])}")

    def _record(self, model_id: str, data_id: str | None = None) -> dict:
        entries = self.model(model_id)["results"]
        if not entries:
            raise KeyError(f"model {model_id!r} has no k* result (its task failed; see failed.csv).")
        entry = entries[0] if data_id is None else next((e for e in entries if e["data"] == data_id), None)
        if entry is None:
            raise KeyError(f"model {model_id!r} has no k* result on {data_id!r}.")
        return json.loads((self.folder / entry["file"]).read_text())

    def kstar(self, model_id: str, data_id: str | None = None) -> KStarResult:
        """The k* result of ``model_id`` on ``data_id`` (default: its first, clean, evaluated set)."""
        return KStarResult.from_dict(self._record(model_id, data_id)["kstar"])

    def chance(self, model_id: str, data_id: str | None = None) -> float:
        """Chance accuracy on an evaluated set, 1 / its classes (KeyError where the model has no result there)."""
        return 1.0 / len(self.kstar(model_id, data_id).per_class)

    def features(self, model_id: str):
        """The features kept for Figure 2."""
        from ..extract import ExtractedFeatures
        from ..pipeline.aggregate import listed_name, slug

        listed = listed_name(self.summary.get("features", {}).get(model_id), "features/")  # older summaries: none
        return ExtractedFeatures.load(self.folder / "features" / (listed or slug(model_id)))

    def gallery_partners(self, model_id: str, data_id: str | None = None) -> dict[int, int]:
        """Sample -> its nearest foreign neighbour, for the smallest-k* samples of each class (found by the task)."""
        return {int(k): v for k, v in self._record(model_id, data_id).get("gallery", {}).items()}

    def images(self, model_id: str, data_id: str | None = None) -> np.ndarray:
        """The evaluated images of ``model_id``'s k* result, in the order of its samples (uint8 arrays)."""
        from ..pipeline.tasks import DataEntry, _dataset

        record = self._record(model_id, data_id)
        data = _dataset(DataEntry(**record["data"]))
        return np.stack([np.asarray(data.image(int(i))) for i in record["indices"]])


def open_results(profile: Any = "default", results_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> Results:
    """The aggregated results of ``profile``: read from ``results_dir``, or, without one, computed in this process
    first (finished tasks reused) and aggregated into the results store.

    A ``results_dir`` that holds no ``summary.json`` (a typo) or the results of another profile is an error: it
    never starts a computation of its own, which for a large profile would run for hours unasked."""
    from ..errors import KStarInputError

    if results_dir is not None:
        summary_path = Path(results_dir) / "summary.json"
        if not summary_path.exists():
            raise KStarInputError(
                f"results_dir {results_dir} holds no summary.json (kstar report writes it into <out>/results/); "
                f"check the path, or pass results_dir=None to compute profile {profile!r} in this process.")
        results = Results(results_dir)
        found = results.summary.get("profile")
        if isinstance(profile, str) and Path(profile).suffix not in (".yaml", ".yml") and found not in (None, profile):
            raise KStarInputError(
                f"results_dir {results_dir} holds the results of profile {found!r}, not {profile!r}; pass "
                f"profile={found!r}, or the results_dir of {profile!r}.")
        return results
    from ..pipeline import load_profile
    from ..pipeline.aggregate import aggregate
    from ..pipeline.run import run_grid
    from ..pipeline.tasks import build_grid, store_for

    prof = load_profile(profile)
    store = store_for(prof)
    run_grid(build_grid(prof), store, client=None, progress=progress)
    return Results(aggregate(prof, store, store / "report"))


def figure_png_with_alt(fig: Any) -> tuple[bytes, dict[str, str]]:
    """A figure's PNG and, as display metadata, its alt text (which nbconvert writes into the page's ``alt``) and the
    width the plots module checked its fonts for (DISPLAY_WIDTH_PX, as on the index)."""
    from ..plots import DISPLAY_WIDTH_PX, alt_text, figure_png

    return figure_png(fig), {"alt": alt_text(fig), "width": DISPLAY_WIDTH_PX}


def figures_with_alt_text() -> None:
    """In IPython (a notebook run by papermill, or JupyterLab), display matplotlib figures with the alt text the
    plots module wrote, so that the published pages describe every figure instead of nbconvert's "No description
    has been provided for this image". Outside IPython nothing happens."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure

    try:  # the inline backend sets its own PNG formatter when it loads: load it first, so that ours stays
        import matplotlib_inline.backend_inline  # noqa: F401
    except ImportError:
        pass
    shell.display_formatter.formatters["image/png"].for_type(Figure, figure_png_with_alt)


def escape(value: Any) -> str:
    """``value`` as text safe inside Markdown or HTML output."""
    return html.escape(str(value), quote=True)


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|~])")  # not "#": it is part of the HTML entities escape() makes


def markdown_escape(value: Any) -> str:
    """``value`` as literal text inside Markdown: HTML-escaped, and the characters Markdown reads as formatting
    backslash-escaped (the "*" of "k*" had closed a caption's italics, and a label "a_b_c" would have been emphasis)."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", escape(value))


def show_markdown(text: str, **values: Any) -> None:
    """Display ``text.format(**values)`` as Markdown, every value escaped (the template itself is ours)."""
    from IPython.display import Markdown, display

    display(Markdown(text.format(**{k: markdown_escape(v) for k, v in values.items()})))


def show_table(frame: pd.DataFrame, links: dict | None = None, digits: int = 3) -> None:
    """Display a DataFrame as the report's escaped, scrolling HTML table."""
    from IPython.display import HTML, display

    from .render import table_html

    display(HTML(str(table_html(frame, links, digits))))


def model_links(results: Results) -> dict[str, dict[str, str]]:
    """Table links from model ids and labels to their per-model pages."""
    from .pages import model_page_name

    pages = {m["id"]: model_page_name(m["id"]) for m in results.summary["models"] if m["results"]}
    pages.update({m["label"]: model_page_name(m["id"]) for m in results.summary["models"] if m["results"]})
    return {"model": pages, "label": pages}


def framework_example(seed: int = 0):
    """Figure 1's computed example: a 2-D latent space built to show one fractured, one overlapped and one clustered
    concept, and its k* result. Returns (points, labels, result)."""
    from ..kstar import compute_kstar
    from ..synthetic import framework_example as example

    points, labels = example(seed=seed)
    return points, labels, compute_kstar(points, labels, bootstrap=1000, bootstrap_seed=seed)


def show_figure_caption(fig) -> None:
    """Display ``fig`` and under it the caption its plotting function wrote (package text, no user strings).

    The figure is shown here and closed, not left to the inline backend's display at the end of the cell, so that in
    a loop each caption sits under its own figure."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    from .. import plots

    text = plots.caption(fig)
    display(fig)
    plt.close(fig)
    if text:
        show_markdown("*{caption}*", caption=text)


def show_claim(results: Results, claim_id: str) -> None:
    """The verdict, the sentence with its numbers and the supporting evidence of one claim, and the rule."""
    claims = {c["id"]: c for c in results.summary.get("claims", [])}
    if claim_id not in claims:
        show_markdown("No {claim} claim can be tested on this profile (no such models).", claim=claim_id)
        return
    c = claims[claim_id]
    text = markdown_escape  # the "*" of "k*" must not start emphasis
    details = "\n".join(f"- {text(d)}" for d in c.get("details", []))
    qualifier = f", {text(c['qualifier'])}" if c.get("qualifier") else ""
    caveats = "\n".join(f"- {text(d)}" for d in results.summary.get("caveats", []))
    from IPython.display import Markdown, display

    display(Markdown(f"**{text(c['title'])}: {text(c['verdict'])}{qualifier}.** {text(c['sentence'])}\n\n"
                     f"{details}\n\n*{text(results.summary.get('verdict_rule', ''))}*"
                     + (f"\n\n**Caveats** (the same as on the index page):\n\n{caveats}" if caveats else "")))


def show_caveats(results: Results, *starts: str) -> None:
    """The report's caveats that begin with one of ``starts`` (e.g. "Attack sample size"), under a table they
    qualify; nothing when the profile has none of them."""
    chosen = [c for c in results.summary.get("caveats", []) if c.startswith(starts)]
    if chosen:
        from IPython.display import Markdown, display

        display(Markdown("\n".join(f"- {markdown_escape(c)}" for c in chosen)))


def evidence_table(results: Results, claim_id: str) -> pd.DataFrame:
    """Every correlation behind a claim (main test, partial correlations, per data set), with n and units."""
    path = results.folder / "evidence.csv"
    if not path.exists():
        return pd.DataFrame()
    from ..evidence import format_p

    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    table = table[table["claim"] == claim_id].drop(columns="claim").reset_index(drop=True)
    if "p_value" in table:  # as the sentences print it ("< 0.001", not a rounded 0.000), beside what it tested
        table.insert(table.columns.get_loc("p_value"), "p", table.pop("p_value").map(format_p))
        if "p_holm" in table:  # and its Holm adjustment right after it
            table.insert(table.columns.get_loc("p") + 1, "p (Holm)", table.pop("p_holm").map(format_p))
    if "threat_model" in table and not table["threat_model"].astype(str).str.strip().any():
        table = table.drop(columns="threat_model")
    return table


PATTERN_COUNTS = ("fractured", "overlapped", "clustered")


def compact_columns(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """A table for the page: each value with a ``<column>_lo`` / ``<column>_hi`` interval in one cell ("0.35 [0.23,
    0.48]", the header saying "[95% CI]"), and the three concept counts in one cell ("2 / 8 / 0"), so that a wide
    table fits the page (the CSVs keep every column apart)."""
    from .render import readable_header

    table = table.copy()
    for column in [c for c in table.columns if f"{c}_lo" in table and f"{c}_hi" in table]:
        lo, hi = f"{column}_lo", f"{column}_hi"
        cells = [format_number(v, digits) + (f" [{format_number(a, digits)}, {format_number(b, digits)}]"
                                            if pd.notna(a) and pd.notna(b) else "")
                 if pd.notna(v) else v for v, a, b in zip(table[column], table[lo], table[hi])]
        table = table.drop(columns=[lo, hi]).assign(**{column: cells})
        table = table.rename(columns={column: f"{readable_header(column)} [95% CI]"})
    if all(p in table for p in PATTERN_COUNTS):
        at = table.columns.get_loc(PATTERN_COUNTS[0])
        counts = [" / ".join(str(int(v)) for v in row) for row in table[list(PATTERN_COUNTS)].itertuples(index=False)]
        table = table.drop(columns=list(PATTERN_COUNTS))
        table.insert(at, "concepts fractured / overlapped / clustered", counts)
    return table


def shifted_set_means(results: Results) -> pd.DataFrame:
    """Per model, its mean accuracy and mean Gamma' over the shifted sets: the points of the built-in study's main
    generalisation test (empty for profiles without shifted sets)."""
    from ..pipeline.claims import shifted_set_means as means

    return means(results.table("generalisation"))


def table_one(results: Results) -> pd.DataFrame:
    """Table 1 as the report shows it: one row per model by id (the labels are on the model pages), compacted by
    :func:`compact_columns` so that the accuracy columns fit beside Gamma and Gamma'. Robust accuracies show two
    decimals (counts out of a hundred or so attacked images) and their budget in the header."""
    table = results.table("table")
    if table.empty:
        return table
    table = compact_columns(table.drop(columns=[c for c in ("label",) if c in table]))
    robust = [c for c in table.columns if str(c).startswith("robust_accuracy_")]
    rob = results.table("robustness") if robust else pd.DataFrame()
    for column in robust:
        tm = column.removeprefix("robust_accuracy_")
        eps = rob.loc[rob["threat_model"] == tm, "eval_eps"].dropna() \
            if {"threat_model", "eval_eps"} <= set(rob.columns) else pd.Series([], dtype=float)
        table[column] = [format_number(v, 2) if pd.notna(v) else v for v in table[column]]
        table = table.rename(columns={column: f"robust accuracy {tm}" + (f" (eps {float(eps.iloc[0]):g})"
                                                                         if len(eps) else "")})
    return table


def robust_accuracy_label(results: Results, threat_model: str) -> str:
    """The x-axis label of one threat model's panel: its own attack budget, not every threat model's."""
    rob = results.table("robustness")
    part = rob[rob["threat_model"] == threat_model] if not rob.empty else rob
    eps = part["eval_eps"].dropna() if "eval_eps" in part else part
    budget = f", eps = {float(eps.iloc[0]):g}" if len(eps) else ""
    attack = part["attack"].dropna().iloc[0] if "attack" in part and part["attack"].notna().any() else "AutoAttack"
    return f"{threat_model} robust accuracy ({attack}{budget})"


def threat_model_tables(results: Results) -> list[tuple[str, float, pd.DataFrame]]:
    """One leaderboard per threat model, as RobustBench shows them: ranked by robust accuracy, eps in the header."""
    rob = results.table("robustness")
    out = []
    if rob.empty:
        return out
    for tm, part in rob.groupby("threat_model", sort=True):
        eps = float(part["eval_eps"].iloc[0]) if part["eval_eps"].notna().any() else float("nan")
        cols = ["label", "clean_accuracy", "robust_accuracy", "robust_accuracy_lo", "robust_accuracy_hi",
                "gamma_prime", "gamma_prime_lo", "gamma_prime_hi", "latent_1nn_accuracy", *PATTERN_COUNTS]
        order = [c for c in ("robust_accuracy", "clean_accuracy") if c in part]  # ties: the better clean accuracy first
        frame = part.sort_values(order, ascending=False, kind="stable")[[c for c in cols if c in part]]
        ranks = frame["robust_accuracy"].rank(method="min", ascending=False).astype(int).to_numpy()
        frame = compact_columns(frame.reset_index(drop=True))
        frame = frame.rename(columns={"label": "model", "robust accuracy [95% CI]": f"robust accuracy ({tm}) [95% CI]"})
        frame.insert(0, "rank (ties share one)", ranks)
        out.append((tm, eps, frame))
    return out


def show_model(results: Results, model_id: str) -> None:
    """The sections of a model's page, in the notebook."""
    from IPython.display import HTML, display

    from .pages import model_accuracies, model_sections, model_title

    show_markdown("## {title}", title=model_title(results, model_id))
    accuracies = model_accuracies(results, model_id)
    if accuracies:
        show_markdown("{accuracies}.", accuracies=accuracies)
    for section in model_sections(results, model_id):
        show_markdown("### {heading}", heading=section["heading"])
        if section.get("text"):
            show_markdown("{body}", body=section["text"])
        if section.get("png"):
            display(HTML(f'<img alt="{escape(section["alt"])}" src="data:image/png;base64,{section["png"]}">'))
        if section.get("table") is not None:
            display(HTML(str(section["table"])))


def show_shifts(results: Results) -> None:
    """State what each evaluated set is (the shift and its parameters)."""
    shifts = results.summary.get("shifts", {})
    if shifts:
        from IPython.display import Markdown, display

        display(Markdown("The evaluated sets:\n\n" + "\n".join(f"- **{escape(k)}**: {escape(v)}"
                                                                for k, v in shifts.items())))


def chance_accuracy(results: Results) -> float:
    """1 / number of classes: a model near it has not learned the task, and its Gamma' is marked as such."""
    for m in results.summary["models"]:
        if m["results"]:
            return results.chance(m["id"])
    return float("nan")


figures_with_alt_text()  # every notebook imports this module first: from then on its figures carry their alt text
