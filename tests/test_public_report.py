"""The report package's public functions, one by one, on a small hand-built results folder (no grid, no training):
what each page and notebook helper shows, that every user string reaching HTML or Markdown is escaped, that numbers
are formatted one way, that pages are written atomically, and that papermill runs a notebook with its parameters."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from kstar_utils.report.notebook import Results

SCRIPT = "<script>alert(1)</script>"
QUOTES = "\"&'"
HOSTILE = f"{SCRIPT} {QUOTES}"
ROBUST_ID = "pgd/Linf<script>"  # a model id with a slash and markup: its page name must be a safe file name
GENERAL_ID = "width8-s0"
ROBUST_PAGE = "model--pgd_Linf_script_-c80e397e50.html"  # its readable head and the hash of the whole id
FAILED_ID = "broken"
DIGITS = {"id": "digits/test", "dataset": "digits", "split": "test", "per_class": None, "seed": 0, "shift": None,
          "data_root": None}
NOWHERE = {"id": "nowhere/test", "dataset": "no-such-data-set", "split": "test", "per_class": None, "seed": 0,
           "shift": None, "data_root": None}


class _Tags(HTMLParser):
    """Every element and attribute of a page, its links and its image attributes."""

    def __init__(self):
        super().__init__()
        self.tags, self.attributes, self.links, self.images = set(), set(), [], []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs)


def _tags(html: str) -> _Tags:
    page = _Tags()
    page.feed(html)
    return page


def _assert_no_injection(html: str) -> None:
    page = _tags(html)
    assert "script" not in page.tags  # no payload became an element
    assert not [a for a in page.attributes if a.startswith("on")]  # nor an event handler
    assert SCRIPT not in html


def _kstar_record(labels: list[str], data: dict, seed: int) -> dict:
    """A k* result on three overlapping 2-D classes (the first in two clusters either side of the second), with each
    sample's nearest foreign neighbour (the gallery partners a k* task stores)."""
    from kstar_utils import compute_kstar

    rng = np.random.default_rng(seed)
    centres = {labels[0]: [(0, 0), (12, 0)], labels[1]: [(6, 0)], labels[2]: [(0, 12)]}
    points, y = [], []
    for label, where in centres.items():
        for i in range(12):
            points.append(np.asarray(where[i % len(where)], float) + rng.normal(0, 3.0, 2))
            y.append(label)
    points = np.asarray(points)
    res = compute_kstar(points, np.asarray(y), bootstrap=50, bootstrap_seed=seed)
    y = np.asarray(y)
    distances = np.linalg.norm(points[:, None] - points[None], axis=2)
    distances[y[:, None] == y[None]] = np.inf
    partners = {str(i): int(j) for i, j in enumerate(distances.argmin(axis=1))}
    return {"model": None, "data": data, "indices": list(range(len(y))), "gallery": partners,
            "kstar": json.loads(res.to_json())}


def _write_results(folder: Path) -> Path:
    """A results folder as ``aggregate`` writes it, small, with hostile labels, class names, title, claims and
    caveats."""
    from kstar_utils.pipeline.aggregate import slug

    folder.mkdir(parents=True)
    (folder / "kstar").mkdir()
    class_names = [f"cat {SCRIPT}", f"dog {QUOTES}", "a_b_c k*"]
    files = {}
    for model_id, data, seed in ((ROBUST_ID, DIGITS, 0), (GENERAL_ID, NOWHERE, 1)):
        record = _kstar_record(class_names, data, seed)
        record["model"] = model_id
        name = f"{slug(model_id)}@{slug(data['id'])}.json"
        (folder / "kstar" / name).write_text(json.dumps(record))
        files[model_id] = [{"data": data["id"], "file": f"kstar/{name}"}]
    k = {"gamma": 0.3, "gamma_lo": 0.2, "gamma_hi": 0.4, "gamma_prime": 0.25, "gamma_prime_lo": 0.1,
         "gamma_prime_hi": 0.4, "fractured": 1, "overlapped": 1, "clustered": 1, "latent_1nn_accuracy": 0.9}
    robust = [{"model": m, "label": lab, "threat_model": "Linf", "eval_eps": 0.1, "clean_accuracy": 0.9,
               "clean_accuracy_lo": 0.85, "clean_accuracy_hi": 0.94, "robust_accuracy": r,
               "robust_accuracy_lo": r - 0.1, "robust_accuracy_hi": r + 0.1, **k, "gamma_prime": g,
               "attack": "apgd-ce"}
              for m, lab, r, g in ((ROBUST_ID, f"PGD {HOSTILE}", 0.4, 0.2), ("r2", "R2", 0.5, 0.0),
                                   ("r3", "R3", 0.6, -0.2))]
    pd.DataFrame(robust).to_csv(folder / "robustness.csv", index=False)
    general = [{"model": m, "label": m.upper(), "data": f"digits/test{'+' + s if s != 'clean' else ''}", "set": s,
                "shift": s, "accuracy": a, "accuracy_lo": a - 0.05, "accuracy_hi": a + 0.05, **k, "gamma_prime": g,
                "config": m.split("-")[0], "seed": 0}
               for m, base in ((GENERAL_ID, 0.9), ("width4-s0", 0.8), ("width2-s0", 0.5))
               for s, a, g in (("clean", base, 0.1), ("noise", base - 0.2, 0.3), ("blur", base - 0.3, 0.4))]
    pd.DataFrame(general).to_csv(folder / "generalisation.csv", index=False)
    pd.DataFrame([{"model": ROBUST_ID, "label": f"PGD {HOSTILE}", **k, "clean_accuracy": 0.9,
                   "robust_accuracy_Linf": 0.4},
                  {"model": GENERAL_ID, "label": "W8", **k, "clean_accuracy": 0.9}]).to_csv(
        folder / "summary_table.csv", index=False)
    summary = {
        "profile": "tiny", "title": f"My report {HOSTILE}", "description": f"About {SCRIPT}",
        "profile_digest": "abc", "origin": "built-in", "created": "2026-01-01T00:00:00+00:00", "threshold": 0.5,
        "compare": [],
        "models": [{"id": ROBUST_ID, "label": f"PGD {HOSTILE}", "family": "robustness", "source": "builtin",
                    "info": {}, "results": files[ROBUST_ID]},
                   {"id": GENERAL_ID, "label": "W8 a_b", "family": "generalisation", "source": "builtin",
                    "info": {}, "results": files[GENERAL_ID]},
                   {"id": FAILED_ID, "label": "Broken", "family": "robustness", "source": "builtin", "info": {},
                    "results": []}],
        "failed": [{"task": f"kstar {FAILED_ID} {SCRIPT}", "model": FAILED_ID, "data": "digits/test",
                    "kind": "kstar", "error": f"boom {QUOTES}"}],
        "counts": {"tasks": 7, "failed": 1},
        "shifts": {"clean": "the unchanged test split", "noise": f"Gaussian noise {SCRIPT}"},
        "trained_on": {}, "data_hash": "0123456789abcdef",
        "claims": [{"id": "robustness", "title": f"Robustness {SCRIPT}", "verdict": "inconclusive",
                    "qualifier": f"only {QUOTES}", "sentence": "Gamma' and k* fall together.",
                    "details": [f"detail {SCRIPT}"]}],
        "verdict_rule": "A claim is reproduced when rho < 0 and p < 0.05.",
        "caveats": ["Attack sample size: only 10 images.", f"Multiple tests: {SCRIPT}"],
        "parameters": {"bootstrap": 50}, "seeds": {"compute": 0},
        "x_labels": {"robustness": "robust accuracy (AutoAttack)", "generalisation": "accuracy"},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return _write_results(tmp_path_factory.mktemp("public-report") / "results")


@pytest.fixture(scope="module")
def results(results_dir) -> Results:
    return Results(results_dir)


@pytest.fixture
def shown(monkeypatch) -> list:
    """What the notebook helpers display, instead of a notebook's output."""
    import IPython.display

    out: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects: out.extend(objects))
    return out


def _bare(folder: Path, **summary) -> Results:
    """A results folder with only a summary (and no tables)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"models": [], **summary}))
    return Results(folder)


# ------------------------------------------------------------------------------------------------------- render.py
def test_environment_autoescapes_is_strict_and_shared():
    """Every template autoescapes (a user string is text, never markup); an undefined variable is an error, not an
    empty string; one environment per process."""
    import jinja2

    from kstar_utils.report.render import environment

    env = environment()
    assert env is environment()
    assert env.from_string("{{ x }}").render(x=HOSTILE) == "&lt;script&gt;alert(1)&lt;/script&gt; &#34;&amp;&#39;"
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing }}").render()
    assert "page.html.j2" in env.list_templates()


def test_css_is_the_shipped_stylesheet():
    """The stylesheet is inlined in every page (nothing loaded from elsewhere): it is the package's file."""
    from kstar_utils.report.render import TEMPLATES, css

    text = css()
    assert text == (TEMPLATES / "style.css").read_text() and "{" in text and "}" in text


@pytest.mark.parametrize("value, digits, expected", [
    (None, 3, "–"), (float("nan"), 3, "–"), ("nan", 3, "–"), ("NaN", 3, "–"), ("", 3, "–"),
    (float("inf"), 3, "inf"), (float("-inf"), 3, "-inf"),
    (0.12345, 3, "0.123"), (0.12345, 2, "0.12"), (2.0, 3, "2.000"), (-0.0001, 3, "0.000"), (-0.0, 3, "0.000"),
    (-0.25, 2, "-0.25"), (3, 3, "3"), (np.int64(7), 3, "7"), ("< 0.001", 3, "< 0.001"), (SCRIPT, 3, SCRIPT),
])
def test_format_value_rounds_numbers_and_shows_missing_values_as_one_dash(value, digits, expected):
    """One way of writing each value in every table: fixed digits, never "-0.000", one dash for missing. Strings are
    returned as they are (the template escapes them)."""
    from kstar_utils.report.render import MISSING, format_value

    assert MISSING == "–"
    assert format_value(value, digits) == expected


def test_format_value_formats_numpy_floats_like_python_floats():
    """Table cells come out of pandas as numpy floats: rounded like any float."""
    from kstar_utils.report.render import format_value

    assert format_value(np.float64(0.12345)) == "0.123" and format_value(np.float64("nan")) == "–"


def _executed_notebook(path: Path) -> Path:
    """An executed notebook as papermill leaves it: a code cell with text, HTML, image and stream outputs."""
    from kstar_utils.plots import figure_png, framework_schematic

    png = base64.b64encode(figure_png(framework_schematic())).decode()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("SECRET_INPUT = 1\nprint('printed')", execution_count=3)
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="printed line\n"),
        nbformat.v4.new_output("display_data", data={"text/html": "<p class='mine'>&lt;script&gt; shown</p>",
                                                     "text/plain": "<p>"}),
        nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"},
                               metadata={"image/png": {"alt": "a figure described"}}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("## A heading"), cell]
    nbformat.write(nb, str(path))
    return path


def test_notebook_body_shows_outputs_without_code_prompts_or_network(tmp_path):
    """A report page shows what a notebook computed, not its code, and loads nothing from the network."""
    from kstar_utils.report.render import notebook_body

    body = str(notebook_body(_executed_notebook(tmp_path / "done.ipynb")))
    assert "SECRET_INPUT" not in body and "In&nbsp;[3]" not in body and "Out[3]" not in body
    assert "printed line" in body and '<p class="mine">&lt;script&gt; shown</p>' in body and "A heading" in body
    [image] = _tags(body).images
    assert image["src"].startswith("data:image/png;base64,") and image["alt"] == "a figure described"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", body)


def test_write_page_escapes_the_title_and_sources_inlines_the_css_and_has_the_footer(tmp_path):
    """The shared page shell: a hostile title and source text are text, the footer says where the page came from."""
    from kstar_utils.report.render import css, write_page

    summary = {"profile": f"p {SCRIPT}", "seeds": {"compute": 0}, "parameters": {"bootstrap": 50}}
    out = write_page(tmp_path / "sub" / "page.html", "page.html.j2", f"Title {HOSTILE}", summary,
                     sources=[("results/a.csv", f"table {SCRIPT}")], body="<b>body & more</b>")
    assert out == tmp_path / "sub" / "page.html"
    html = out.read_text()
    _assert_no_injection(html)
    assert "<title>Title &lt;script&gt;alert(1)&lt;/script&gt; &#34;&amp;&#39;</title>" in html
    assert "&lt;b&gt;body &amp; more&lt;/b&gt;" in html  # a plain string body is escaped too: only Markup is trusted
    assert css() in html
    page = _tags(html)
    assert page.links == ["index.html", "results/a.csv"]
    for field in ("profile", "parameters", "seeds", "data hash", "git commit", "versions", "page made"):
        assert f"<dt>{field}</dt>" in html
    assert "<dd>bootstrap = 50</dd>" in html and "<dd>compute 0</dd>" in html
    html = write_page(tmp_path / "index.html", "page.html.j2", "t", summary, back_to_index=False, body="").read_text()
    assert 'href="index.html"' not in html


def test_write_page_replaces_a_page_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous page as it was and no temporary file beside it."""
    from kstar_utils.report.render import write_page

    path = tmp_path / "page.html"
    path.write_text("previous page")
    original = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        original(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_page(path, "page.html.j2", "t", {"profile": "p"}, body="new")
    monkeypatch.undo()
    assert path.read_text() == "previous page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]
    write_page(path, "page.html.j2", "new title", {"profile": "p"}, body="new")
    assert "<title>new title</title>" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]


def test_notebook_page_wraps_an_executed_notebook_in_the_page_shell(tmp_path):
    """A notebook's page: its outputs in the shell, the title escaped, the executed notebook linked."""
    from kstar_utils.report.render import notebook_page

    (tmp_path / "executed").mkdir()
    executed = _executed_notebook(tmp_path / "executed" / "01.ipynb")
    out = notebook_page(executed, tmp_path / "01.html", f"Figure 1 {HOSTILE}", {"profile": "p"},
                        iter([("executed/01.ipynb", "the executed notebook")]))
    html = out.read_text()
    _assert_no_injection(html)
    assert out == tmp_path / "01.html"
    assert "<title>Figure 1 &lt;script&gt;alert(1)&lt;/script&gt; &#34;&amp;&#39;</title>" in html
    assert "printed line" in html and "SECRET_INPUT" not in html and "<footer>" in html
    assert [a for a in _tags(html).links if not a.startswith("#")] == ["index.html", "executed/01.ipynb"]


# ------------------------------------------------------------------------------------------------------ execute.py
def test_the_model_notebook_runs_on_a_published_results_folder(results_dir, tmp_path):
    """model.ipynb, as a user runs it in JupyterLab or papermill on a report's results: every section of the model's
    page is shown and no cell fails (show_model raised TypeError for every model until a test called it)."""
    from pathlib import Path as _Path

    import kstar_utils
    from kstar_utils.report.execute import execute_notebook

    notebook = _Path(kstar_utils.__file__).parent / "notebooks" / "model.ipynb"
    output = execute_notebook(notebook, tmp_path / "model.ipynb", {"results_dir": str(results_dir), "profile": "tiny",
                                                                    "model": GENERAL_ID})
    cells = nbformat.read(str(output), as_version=4).cells
    assert not [o for c in cells if c.cell_type == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    shown = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in cells[-1].outputs)
    assert "## W8 a\\_b" in shown or "## W8 a_b" in shown  # the label as the heading (Markdown-escaped)
    assert "### Per-class statistics" in shown and "### On every evaluated data set" in shown


def test_execute_notebook_injects_the_parameters_and_writes_the_executed_copy(tmp_path, monkeypatch):
    """papermill runs the notebook in its own folder with the given parameters and the inline backend; the executed
    copy lands at ``output`` (its folder made) and nothing else is left beside it."""
    import os

    from kstar_utils.report.execute import INLINE_BACKEND, execute_notebook

    monkeypatch.setenv("MPLBACKEND", "Agg")
    source = tmp_path / "nb" / "tiny.ipynb"
    source.parent.mkdir()
    nb = nbformat.v4.new_notebook()
    body = ("import os\nfrom pathlib import Path\n"
            "_ = Path('written.txt').write_text(f\"{value}|{label}|{os.environ['MPLBACKEND']}\")\nprint('ran', value)")
    nb.cells = [nbformat.v4.new_code_cell("value = 1\nlabel = 'default'"), nbformat.v4.new_code_cell(body)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(source))
    before = source.read_text()
    output = tmp_path / "out" / "deeper" / "tiny.ipynb"
    assert execute_notebook(source, output, {"value": 42, "label": SCRIPT}) == output
    assert (source.parent / "written.txt").read_text() == f"42|{SCRIPT}|{INLINE_BACKEND}"
    executed = nbformat.read(str(output), as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "value = 42" in injected[0].source
    assert "ran 42" in "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert sorted(p.name for p in output.parent.iterdir()) == ["tiny.ipynb"]  # no temporary copy left
    assert source.read_text() == before  # the source notebook is not executed in place
    assert os.environ["MPLBACKEND"] == "Agg"  # the run's environment is undone


# ----------------------------------------------------------------------------------------------------- notebook.py
def test_figures_with_alt_text_registers_the_png_formatter_in_ipython(monkeypatch):
    """In a notebook a matplotlib figure is displayed as PNG with its alt text as metadata; outside IPython the call
    changes nothing."""
    import IPython
    from IPython.core.formatters import PNGFormatter
    from matplotlib.figure import Figure

    from kstar_utils import plots
    from kstar_utils.report.notebook import figure_png_with_alt, figures_with_alt_text

    class Shell:
        class display_formatter:
            formatters = {"image/png": PNGFormatter()}

    shell = Shell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert figures_with_alt_text() is None
    with pytest.raises(KeyError):
        shell.display_formatter.formatters["image/png"].lookup_by_type(Figure)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    figures_with_alt_text()
    formatter = shell.display_formatter.formatters["image/png"]
    assert formatter.lookup_by_type(Figure) is figure_png_with_alt
    fig = plots.framework_schematic()
    data, metadata = formatter(fig)
    assert data.startswith(b"\x89PNG") and metadata["alt"] == plots.alt_text(fig) and len(metadata["alt"]) > 20


def test_show_markdown_escapes_every_value_but_not_the_template(shown):
    """The template is ours (its Markdown stays), each value is a user's (shown literally: no HTML, no emphasis)."""
    from IPython.display import Markdown

    from kstar_utils.report.notebook import show_markdown

    show_markdown("## {title}: *{caption}*", title=HOSTILE, caption="k* of a_b_c")
    [out] = shown
    assert isinstance(out, Markdown)
    assert out.data == "## &lt;script&gt;alert(1)&lt;/script&gt; &quot;&amp;&#x27;: *k\\* of a\\_b\\_c*"


def test_show_table_displays_the_escaped_html_table_with_links(shown):
    """A notebook table is the report's table: escaped cells, linked models, rounded numbers."""
    from IPython.display import HTML

    from kstar_utils.report.notebook import show_table

    frame = pd.DataFrame({"model": [SCRIPT, "b"], "gamma_prime": [0.12345, float("nan")]})
    show_table(frame, links={"model": {SCRIPT: f"model--{QUOTES}.html"}}, digits=2)
    [out] = shown
    assert isinstance(out, HTML)
    _assert_no_injection(out.data)
    assert '<a href="model--&#34;&amp;&#39;.html">&lt;script&gt;alert(1)&lt;/script&gt;</a>' in out.data
    assert "<td>0.12</td>" in out.data and "<td>–</td>" in out.data and "<th>Gamma&#39;</th>" in out.data
    assert _tags(out.data).links == ["model--\"&'.html"]


def test_model_links_map_ids_and_labels_of_models_with_results_to_their_pages(results):
    """Table 1 links each model, by id or by label, to its page; a model whose task failed has no page to link."""
    from kstar_utils.report.notebook import model_links

    links = model_links(results)
    expected = {ROBUST_ID: ROBUST_PAGE, f"PGD {HOSTILE}": ROBUST_PAGE,
                GENERAL_ID: "model--width8-s0.html", "W8 a_b": "model--width8-s0.html"}
    assert links == {"model": expected, "label": expected}
    assert FAILED_ID not in links["model"] and "Broken" not in links["label"]


def test_show_claim_shows_verdict_sentence_details_rule_and_caveats_escaped(results, shown):
    """One claim's verdict in bold with its qualifier, then its evidence and the rule; every string escaped."""
    from kstar_utils.report.notebook import show_claim

    show_claim(results, "robustness")
    [out] = shown
    text = out.data
    assert text.startswith("**Robustness &lt;script&gt;alert(1)&lt;/script&gt;: inconclusive, only "
                           "&quot;&amp;&#x27;.** Gamma&#x27; and k\\* fall together.")
    assert "- detail &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "*A claim is reproduced when rho &lt; 0 and p &lt; 0.05.*" in text
    assert "**Caveats** (the same as on the index page):" in text and "- Attack sample size: only 10 images." in text
    assert SCRIPT not in text


def test_show_claim_says_so_when_the_profile_cannot_test_the_claim(results, shown):
    """A claim the profile has no models for is named (escaped), not a KeyError."""
    from kstar_utils.report.notebook import show_claim

    show_claim(results, f"gen {SCRIPT}")
    [out] = shown
    assert out.data == ("No gen &lt;script&gt;alert(1)&lt;/script&gt; claim can be tested on this profile "
                        "(no such models).")


def test_show_caveats_shows_only_the_chosen_caveats_escaped(results, shown):
    """Under a table only the caveats that qualify it; none of them, nothing at all."""
    from kstar_utils.report.notebook import show_caveats

    show_caveats(results, "Multiple tests", "Attack sample size")
    [out] = shown
    assert out.data == "- Attack sample size: only 10 images.\n- Multiple tests: &lt;script&gt;alert(1)&lt;/script&gt;"
    show_caveats(results, "Multiple tests")
    assert shown[1].data == "- Multiple tests: &lt;script&gt;alert(1)&lt;/script&gt;"
    show_caveats(results, "No such caveat")
    assert len(shown) == 2


def test_compact_columns_puts_intervals_and_concept_counts_in_one_cell():
    """Each value with its 95% interval in one cell, the three concept counts in one, everything else as it was."""
    from kstar_utils.report.notebook import compact_columns

    table = pd.DataFrame({"model": ["a", "b", "c"], "gamma_prime": [-0.0001, 0.3456, float("nan")],
                          "gamma_prime_lo": [-0.2, float("nan"), 0.1], "gamma_prime_hi": [0.1, float("nan"), 0.2],
                          "fractured": [2, 0, 1], "overlapped": [8, 3, 1], "clustered": [0, 7, 1],
                          "clean_accuracy": [0.9, 0.8, 0.7]})
    out = compact_columns(table)
    assert list(out.columns) == ["model", "Gamma' [95% CI]", "concepts fractured / overlapped / clustered",
                                 "clean_accuracy"]
    cells = list(out["Gamma' [95% CI]"])
    assert cells[:2] == ["0.00 [-0.20, 0.10]", "0.35"] and pd.isna(cells[2])  # no "-0.00"; no interval, no brackets
    assert list(out["concepts fractured / overlapped / clustered"]) == ["2 / 8 / 0", "0 / 3 / 7", "1 / 1 / 1"]
    assert list(out["clean_accuracy"]) == [0.9, 0.8, 0.7]
    assert compact_columns(table, digits=3)["Gamma' [95% CI]"][0] == "0.000 [-0.200, 0.100]"
    assert "gamma_prime_lo" in table  # the caller's table is not changed
    partial = compact_columns(table.drop(columns=["gamma_prime_hi", "clustered"]))
    assert {"gamma_prime", "gamma_prime_lo", "fractured", "overlapped"} <= set(partial.columns)


def test_show_model_shows_the_model_page_in_the_notebook_escaped(results, shown):
    """model.ipynb shows the same sections as the model's page: the label as a heading, the accuracies, each
    section's heading, text, figure (with its alt text, escaped) and table."""
    from IPython.display import HTML, Markdown

    from kstar_utils.report.notebook import show_model

    show_model(results, ROBUST_ID)
    markdown = [o.data for o in shown if isinstance(o, Markdown)]
    html = [o.data for o in shown if isinstance(o, HTML)]
    assert markdown[0] == "## PGD &lt;script&gt;alert(1)&lt;/script&gt; &quot;&amp;&#x27;"
    assert "Each row is a concept (class); fractured concepts have their mass at low k\\*." in markdown
    assert len([h for h in html if h.startswith("<img")]) == 2


def test_show_model_shows_headings_accuracies_figures_and_tables_escaped(results, shown, monkeypatch):
    """The parts of show_model that work around the bug above (sections without text): the label as a heading, the
    accuracies, each section's heading, figure (its alt text escaped) and table."""
    from IPython.display import HTML, Markdown

    from kstar_utils.report import pages
    from kstar_utils.report.notebook import show_model

    sections = pages.model_sections
    monkeypatch.setattr(pages, "model_sections", lambda r, m: [{k: v for k, v in s.items() if k != "text"}
                                                               for s in sections(r, m)])
    show_model(results, ROBUST_ID)
    markdown = [o.data for o in shown if isinstance(o, Markdown)]
    html = [o.data for o in shown if isinstance(o, HTML)]
    assert markdown[0] == "## PGD &lt;script&gt;alert(1)&lt;/script&gt; &quot;&amp;&#x27;"
    assert markdown[1] == ("Clean accuracy (digits/test) 0.90 \\[0.85, 0.94\\]; Linf robust accuracy (eps 0.1) 0.40 "
                           "\\[0.30, 0.50\\].")
    assert "### k\\* distribution of every concept (digits/test)" in markdown
    assert "### Per-class statistics (digits/test)" in markdown
    images = [_tags(h).images[0] for h in html if h.startswith("<img")]
    assert len(images) == 2 and all(i["src"].startswith("data:image/png;base64,") for i in images)
    assert "PGD <script>alert(1)</script>" in images[0]["alt"]  # the parser unescapes: it was an attribute value
    for h in html:
        _assert_no_injection(h)
    assert any("<td class=\"text\">cat &lt;script&gt;alert(1)&lt;/script&gt;</td>" in h for h in html)


def test_show_shifts_names_each_evaluated_set_escaped(results, shown, tmp_path):
    """What each shifted set is, one line each; a profile without shifted sets shows nothing."""
    from kstar_utils.report.notebook import show_shifts

    show_shifts(results)
    [out] = shown
    assert out.data == ("The evaluated sets:\n\n- **clean**: the unchanged test split\n"
                        "- **noise**: Gaussian noise &lt;script&gt;alert(1)&lt;/script&gt;")
    show_shifts(_bare(tmp_path / "r", shifts={}))
    assert len(shown) == 1


def test_chance_accuracy_is_one_over_the_number_of_classes(results, tmp_path):
    """A model near 1 / classes has not learned the task; with no k* result at all there is no chance level."""
    from kstar_utils.report.notebook import chance_accuracy

    assert chance_accuracy(results) == pytest.approx(1 / 3)
    assert math.isnan(chance_accuracy(_bare(tmp_path / "r", models=[{"id": "x", "label": "x", "results": []}])))


def test_results_chance_is_one_over_the_classes_of_that_evaluated_set(results):
    assert results.chance(GENERAL_ID) == pytest.approx(1 / 3)
    assert results.chance(ROBUST_ID, "digits/test") == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match="no k\\* result on 'cifar10/test'"):
        results.chance(ROBUST_ID, "cifar10/test")


# -------------------------------------------------------------------------------------------------------- pages.py
def test_model_page_name_is_a_safe_file_name_for_any_model_id():
    """A model id with slashes, markup or quotes becomes a file name in the report folder, never a path out of it."""
    from kstar_utils.report.pages import model_page_name

    assert model_page_name("standard-s0") == "model--standard-s0.html"
    assert re.fullmatch(r"model--Addepalli2021Towards_RN18_Linf-[0-9a-f]{10}\.html",
                        model_page_name("Addepalli2021Towards_RN18/Linf"))
    assert re.fullmatch(r"model--_x__script_alert_1___script_____-[0-9a-f]{10}\.html",
                        model_page_name(f"../x {HOSTILE}"))
    assert model_page_name("a/b") != model_page_name("a") and "/" not in model_page_name("../../etc/passwd")


def test_model_title_is_the_label_alone(results):
    """The page's H1 is the label (unescaped here: the template escapes it); an unknown model is a KeyError naming
    the models there are."""
    from kstar_utils.report.pages import model_title

    assert model_title(results, ROBUST_ID) == f"PGD {HOSTILE}" and model_title(results, GENERAL_ID) == "W8 a_b"
    with pytest.raises(KeyError, match="'nope' is not in this report; models: pgd/Linf<script>, width8-s0, broken"):
        model_title(results, "nope")


def test_model_accuracies_give_each_accuracy_with_its_interval(results):
    """Clean and robust accuracy with 95% intervals and the attack budget; for a model on shifted sets its clean
    accuracy and the means over the shifted sets; nothing for a model with neither."""
    from kstar_utils.report.pages import model_accuracies

    assert model_accuracies(results, ROBUST_ID) == ("Clean accuracy (digits/test) 0.90 [0.85, 0.94]; "
                                                    "Linf robust accuracy (eps 0.1) 0.40 [0.30, 0.50]")
    assert model_accuracies(results, GENERAL_ID) == ("Clean accuracy (digits/test) 0.90 [0.85, 0.95]; mean over the 2 "
                                                     "shifted sets: accuracy 0.65, Gamma' 0.35")
    assert model_accuracies(results, FAILED_ID) == ""


def test_model_sections_hold_the_distribution_table_data_sets_and_gallery(results):
    """A model's page: its k* distribution (figure with alt text), per-class table (class names escaped), for a
    model on several data sets a table of them with "near chance", and the gallery, or a note where the images are
    not on this machine."""
    from kstar_utils.report.pages import model_sections

    robust = model_sections(results, ROBUST_ID)
    assert [s["heading"] for s in robust] == [
        "k* distribution of every concept (digits/test)", "Per-class statistics (digits/test)",
        "What splits a concept: the samples with the smallest k* (digits/test)"]
    figure, table, gallery = robust
    assert len(base64.b64decode(figure["png"])) > 1000 and f"PGD {HOSTILE}" in figure["alt"]
    assert gallery["png"] and gallery["alt"].startswith("Gallery of the most fractured concepts")
    html = str(table["table"])
    _assert_no_injection(html)
    assert "<td class=\"text\">cat &lt;script&gt;alert(1)&lt;/script&gt;</td>" in html
    assert "<td class=\"text\">dog &#34;&amp;&#39;</td>" in html
    res = results.kstar(ROBUST_ID)
    assert html.count("<tr>") == 1 + len(res.per_class)
    general = model_sections(results, GENERAL_ID)
    assert [s["heading"] for s in general] == [
        "k* distribution of every concept (nowhere/test)", "Per-class statistics (nowhere/test)",
        "On every evaluated data set", "What splits a concept"]
    sets = str(general[2]["table"])
    assert "near chance</th>" in sets and ">digits/test+noise<" in sets and ">0.700<" in sets
    assert "accuracy within 0.1 of chance (0.33: one over the set's classes)" in general[2]["text"]
    assert "not on this machine" in general[3]["text"] and "png" not in general[3]


def test_near_chance_no_is_not_shown_as_not_measured(results):
    """Every accuracy of the data-set table is measured: no cell of it should read as a missing value."""
    from kstar_utils.report.pages import model_sections

    sets = str(model_sections(results, GENERAL_ID)[2]["table"])
    assert "<td>–</td>" not in sets and "not measured" not in sets


def test_near_chance_takes_each_evaluated_sets_own_chance(results_dir, monkeypatch):
    """An encoder evaluated on a 3-class and a 10-class set: each row is judged against 1 / its own classes (0.15 is
    near chance for 10 classes, 0.5 is not for 3), an unmeasured accuracy shows the missing mark, and the text names
    both levels."""
    from types import SimpleNamespace

    from kstar_utils.report.pages import model_sections

    results = Results(results_dir)
    table = results.table("generalisation")
    rows = table["model"] == GENERAL_ID
    table.loc[rows, "accuracy"] = [0.5, 0.15, np.nan]  # clean (3 classes), noise (10 classes), blur (not measured)
    monkeypatch.setattr(results, "table", lambda name: table if name == "generalisation" else Results.table(results,
                                                                                                              name))
    real = Results.kstar
    classes = {"digits/test+noise": 10}

    def kstar(self, model_id, data_id=None):
        if data_id in classes:
            return SimpleNamespace(per_class=pd.DataFrame({"label": range(classes[data_id])}))
        if data_id == "digits/test+blur":
            raise KeyError("no result")  # the page then uses the model's first set's chance
        return real(self, model_id, data_id if data_id != "digits/test" else None)

    monkeypatch.setattr(Results, "kstar", kstar)
    section = model_sections(results, GENERAL_ID)[2]
    cells = re.findall(r"<td class=\"text\">(yes|no|–)</td>", str(section["table"]))
    assert cells == ["no", "yes", "–"]
    assert "(0.33, 0.10: one over the set&#39;s classes)" in section["text"] or \
        "(0.33, 0.10: one over the set's classes)" in section["text"]


def test_render_model_page_writes_an_escaped_page_with_its_numbers_and_sources(results_dir, results, tmp_path):
    """One model's page: the label as title and H1 (escaped), the accuracies, Gamma and Gamma' with their bootstrap
    interval and pattern counts as the result has them, its figures, and links to the files behind it."""
    from kstar_utils.evidence import format_number
    from kstar_utils.report.pages import render_model_page

    name = render_model_page(results_dir, ROBUST_ID, tmp_path)
    assert name == ROBUST_PAGE
    html = (tmp_path / name).read_text()
    _assert_no_injection(html)
    escaped = "PGD &lt;script&gt;alert(1)&lt;/script&gt; &#34;&amp;&#39;"
    assert f"<title>{escaped}</title>" in html and f"<h1>{escaped}</h1>" in html
    assert ('<p class="subtitle">Clean accuracy (digits/test) 0.90 [0.85, 0.94]; Linf robust accuracy (eps 0.1) 0.40 '
            '[0.30, 0.50].</p>') in html
    res = results.kstar(ROBUST_ID)
    lo, hi = res.intervals["gamma_prime"]
    counts = res.pattern_counts
    assert (f"<p>Gamma = {format_number(res.gamma_true, 3)}, Gamma&#39; = {format_number(res.gamma_approx, 3)} "
            f"(95% bootstrap interval {format_number(lo)} to {format_number(hi)}); {counts['Fractured']} fractured, "
            f"{counts['Overlapped']} overlapped, {counts['Clustered']} clustered concepts; 36 evaluated samples; "
            f"k* computed exact.</p>") in html
    page = _tags(html)
    from kstar_utils.pipeline.aggregate import slug

    assert page.links == ["index.html", f"results/kstar/{slug(ROBUST_ID)}@{slug('digits/test')}.json",
                          "results/summary_table.csv"]
    assert len(page.images) == 2 and all(len(i["alt"]) > 20 for i in page.images)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # written whole, nothing left beside it


def test_index_figures_plot_gamma_prime_against_robustness_and_generalisation(results, tmp_path):
    """The index shows Gamma' against robust accuracy and against the mean accuracy over shifted sets; without
    shifted sets one panel per data set; without tables nothing."""
    from kstar_utils.report.pages import index_figures

    figures = index_figures(results)
    assert len(figures) == 2
    robust, general = figures
    assert robust["alt"].startswith("Scatter plot of Gamma' against robust accuracy (AutoAttack)")
    assert "mean accuracy on the shifted test sets" in general["alt"]
    for figure in figures:
        assert base64.b64decode(figure["png"]).startswith(b"\x89PNG")
        assert figure["caption"].startswith("Bands: mostly fractured")
    folder = tmp_path / "r"
    _bare(folder)
    empty = pd.DataFrame().to_csv(index=False)  # as aggregate writes a table without rows
    (folder / "robustness.csv").write_text(empty)
    (folder / "generalisation.csv").write_text(empty)
    assert index_figures(Results(folder)) == []
    gen = pd.read_csv(results.folder / "generalisation.csv")
    gen[gen["shift"] == "clean"].to_csv(folder / "generalisation.csv", index=False)
    [by_set] = index_figures(Results(folder))
    assert by_set["alt"].startswith("Scatter plot of Gamma' against accuracy") and "One panel per set (clean)" in \
        by_set["alt"]


def test_render_index_writes_the_escaped_index_with_verdicts_failures_and_links(results_dir, tmp_path):
    """The index: title, description, claims, caveats and failed tasks escaped; Table 1 linking each model's page;
    the notebook and model pages linked with escaped names; no link back to itself."""
    from kstar_utils.report.pages import render_index

    out = render_index(results_dir, tmp_path, [("01_framework.html", "Figure <1>")],
                       [(ROBUST_PAGE, f"PGD {HOSTILE}")])
    assert out == tmp_path / "index.html"
    html = out.read_text()
    _assert_no_injection(html)
    assert "<title>My report &lt;script&gt;alert(1)&lt;/script&gt; &#34;&amp;&#39;</title>" in html
    assert "About &lt;script&gt;alert(1)&lt;/script&gt;</p>" in html
    assert ("Robustness &lt;script&gt;alert(1)&lt;/script&gt;: inconclusive, only &#34;&amp;&#39;.</span>") in html
    assert "<li>Multiple tests: &lt;script&gt;alert(1)&lt;/script&gt;</li>" in html
    assert "<td>kstar broken &lt;script&gt;alert(1)&lt;/script&gt;</td><td>boom &#34;&amp;&#39;</td>" in html
    assert "1 of 7 tasks failed." in html and "(skew &gt; 0.5, blue)" in html
    assert f'<a href="{ROBUST_PAGE}">pgd/Linf&lt;script&gt;</a>' in html  # Table 1 links its rows
    assert '<a href="01_framework.html">Figure &lt;1&gt;</a>' in html
    assert (f'<a href="{ROBUST_PAGE}">PGD &lt;script&gt;alert(1)&lt;/script&gt; &#34;&amp;&#39;</a>'
            in html)
    page = _tags(html)
    assert "index.html" not in page.links and "results/failed.csv" in page.links
    assert len(page.images) == 2 and html.count("<figcaption>Bands: mostly fractured") == 2
    assert "<td>0.30 [0.20, 0.40]</td>" in html and "<td>1 / 1 / 1</td>" in html
