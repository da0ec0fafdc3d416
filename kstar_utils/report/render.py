"""HTML pages from Jinja2 templates: notebook pages, per-model pages, the index, tables, the footer.

Every template autoescapes, so any string a user supplied (a model label, a class name, a title, a path, an error
message) is escaped where it is inserted. Exactly two kinds of HTML are inserted as already safe, both made by this
package: nbconvert's rendering of an executed report notebook (whose cells escape user strings themselves, see
:mod:`kstar_utils.report.notebook`) and tables rendered by :func:`table_html` from the autoescaping table template.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from ..evidence import format_number
from ..plumbing import atomic_write_text

TEMPLATES = Path(__file__).resolve().parent / "templates"
MISSING = "–"  # one way of showing a missing value, everywhere


@lru_cache(maxsize=1)
def environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=False)


def _trusted(html: str) -> Markup:
    """Mark HTML made by this package (nbconvert output of our notebooks, our table template) as safe to insert."""
    return Markup(html)


def css() -> str:
    return (TEMPLATES / "style.css").read_text()


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell as text: numbers rounded, missing values as one dash."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return format_number(value, digits)  # never "-0.000"
    if isinstance(value, str) and value.lower() in ("nan", ""):
        return MISSING
    return str(value)


HEADER_WORDS = {"gamma_prime": "Gamma'", "gamma": "Gamma", "latent_1nn_accuracy": "latent 1-NN accuracy",
                "n_samples": "samples", "ci_lo": "95% CI lo", "ci_hi": "95% CI hi",
                "p_tests": "p tested on", "rho_of_means": "rho of the means"}


def readable_header(column: str) -> str:
    """A results column as a table header: "gamma_prime_lo" -> "Gamma' 95% lo", "robust_accuracy_Linf" ->
    "robust accuracy Linf"; other names with their underscores as spaces."""
    name = str(column)
    for suffix, words in (("_lo", " 95% lo"), ("_hi", " 95% hi")):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and (base in HEADER_WORDS or base.endswith("accuracy")):
            return readable_header(base) + words
    return HEADER_WORDS.get(name, name.replace("_", " "))


NUMBER_CELL = re.compile(r"^[<>]?\s?[-+]?(\d|\.\d|inf\b|nan\b)")


def table_html(frame: pd.DataFrame, links: dict[str, dict[str, str]] | None = None, digits: int = 3) -> Markup:
    """A DataFrame as an escaped HTML table in a horizontally scrolling wrapper. ``links``: column -> {value: href}."""
    links = links or {}
    rows = []
    for record in frame.itertuples(index=False):
        row = []
        for column, value in zip(frame.columns, record):
            text = format_value(value, digits)
            row.append({"text": text, "href": links.get(column, {}).get(value)})
        rows.append(row)
    missing = any(cell["text"] == MISSING for row in rows for cell in row)
    # words read from the left; numbers (also "< 0.001" or "0.35 [0.23, 0.48]") line up on the right
    text = [any(not NUMBER_CELL.match(row[i]["text"]) for row in rows if row[i]["text"] not in (MISSING, "n/a", ""))
            for i in range(len(frame.columns))]
    columns = [{"name": readable_header(c), "text": t} for c, t in zip(frame.columns, text)]
    return _trusted(environment().get_template("table.html.j2").render(columns=columns, rows=rows,
                                                                       missing=MISSING if missing else None))


def png(fig) -> str:
    """A matplotlib figure as base64 PNG, saved by :func:`kstar_utils.plots.figure_png` (150 dpi, the layout the
    figure was checked for), and closed."""
    import matplotlib.pyplot as plt

    from ..plots import figure_png

    data = figure_png(fig)
    plt.close(fig)
    return base64.b64encode(data).decode()


def alt_text(fig, default: str) -> str:
    """The figure's alt text (written by :mod:`kstar_utils.plots`), else ``default``."""
    from ..plots import alt_text as figure_alt

    return figure_alt(fig, default) or default


def notebook_body(executed: str | os.PathLike) -> Markup:
    """An executed notebook's outputs as HTML (no code, images embedded, nothing loaded from the network)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="basic")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nbformat.read(str(executed), as_version=4))
    return _trusted(body)


@lru_cache(maxsize=1)
def _this_checkouts_commit() -> str:
    """:func:`git_commit` of this checkout, asked once per process (every page's footer shows it)."""
    return git_commit()


def git_commit(root: str | os.PathLike | None = None, code: Sequence[str] | None = None) -> str:
    """The commit of the kstar checkout that made the report, or a note when it is not a git checkout. "With
    uncommitted changes" is said only of what makes a report (``code``: the package with its notebooks and
    profiles, and pyproject.toml), not of a committed report being rebuilt in place."""
    package = Path(__file__).resolve().parents[1]
    root = Path(root) if root is not None else package.parent
    code = list(code) if code is not None else [package.name, "pyproject.toml"]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *code],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out + (" (with uncommitted changes to the code)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"


def plain(value: Any) -> str:
    """A parameter as prose, not a Python repr: lists and tuples comma-separated, mappings as "key value" pairs,
    numbers in their shortest form ("0.1", not "0.100")."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def footer(summary: dict) -> list[tuple[str, str]]:
    """Provenance shown on every page: commit, versions, seeds, profile parameters, data hash, date."""
    from ..kstar import versions

    libs = versions(("kstar_utils", "numpy", "torch", "torchvision", "scikit-learn", "pynndescent", "dask",
                     "papermill", "open_clip_torch", "robustbench"))
    params = summary.get("parameters", {})
    return [
        ("profile", f"{summary['profile']} ({summary.get('origin', '')}; digest {summary.get('profile_digest', '')})"),
        ("parameters", "; ".join(f"{k.replace('_', ' ')} = {plain(v)}" for k, v in params.items()) or MISSING),
        ("seeds", "; ".join(f"{k} {plain(v)}" for k, v in summary["seeds"].items()) if summary.get("seeds")
         else MISSING),
        ("data hash", summary.get("data_hash", MISSING)),
        *([("models trained on", "; ".join(f"{machine} ({count} model{'' if count == 1 else 's'})" for machine, count
                                           in summary["trained_on"].items()))] if summary.get("trained_on") else []),
        ("git commit", _this_checkouts_commit()),
        ("versions", ", ".join(f"{k} {v}" for k, v in libs.items() if v)),
        ("results computed", summary.get("created", MISSING)),
        ("page made", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")),
    ]


def write_page(path: str | os.PathLike, template: str, title: str, summary: dict,
               sources: Sequence[tuple[str, str]] = (), back_to_index: bool = True, **context: Any) -> Path:
    """Render ``template`` with the shared page shell (stylesheet inline, footer) and write it atomically."""
    html = environment().get_template(template).render(
        title=title, css=_trusted(css()), footer=footer(summary), sources=list(sources),
        back_to_index=back_to_index, **context)
    atomic_write_text(path, html)
    return Path(path)


def notebook_page(executed: str | os.PathLike, html_path: str | os.PathLike, title: str, summary: dict,
                  sources: Iterable[tuple[str, str]] = ()) -> Path:
    """An executed notebook as a self-contained page."""
    return write_page(html_path, "page.html.j2", title, summary, sources=list(sources), body=notebook_body(executed))
