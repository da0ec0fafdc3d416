"""Reports: a profile's task grid -> aggregated results -> executed notebooks and pages -> a published HTML folder.

:func:`build_report` is the one orchestrator (``kstar report`` calls it): it runs the grid on Dask (or in this
process), aggregates the results store into the report's ``results/`` folder, executes every notebook with papermill
and renders every page as jobs on the same cluster, writes the index, and publishes the whole folder at once (see
:mod:`kstar_utils.report.publish`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .execute import NOTEBOOKS, PER_MODEL_NOTEBOOK, execute_notebook, notebooks_dir
from .notebook import Results, open_results
from .publish import ReportFolder

__all__ = [
    "NOTEBOOKS",
    "PER_MODEL_NOTEBOOK",
    "ReportFolder",
    "Results",
    "build_report",
    "notebooks_dir",
    "open_results",
    "render_notebook_page",
]


def render_notebook_page(name: str, title: str, stage: str, profile_ref: str) -> tuple[str, str]:
    """Execute notebook ``name`` against the staged results and write its page; returns (page file, title)."""
    from .notebook import Results
    from .render import notebook_page

    stage_dir = Path(stage)
    executed = execute_notebook(notebooks_dir() / f"{name}.ipynb", stage_dir / "executed" / f"{name}.ipynb",
                                {"profile": profile_ref, "results_dir": str(stage_dir / "results")})
    summary = Results(stage_dir / "results").summary
    sources = [(f"executed/{name}.ipynb", "the executed notebook"), ("results/summary.json", "summary (JSON)")]
    sources += [(f"results/{f}", f"{f} (CSV)") for f in ("robustness.csv", "generalisation.csv", "summary_table.csv",
                                                         "evidence.csv")
                if (stage_dir / "results" / f).exists()]
    page = f"{name}.html"
    notebook_page(executed, stage_dir / page, title, summary, sources)
    return page, title


def build_report(profile: Any = "default", out: str | os.PathLike = "reports",
                 results_dir: str | os.PathLike | None = None, scheduler: str | None = "local",
                 n_workers: int | None = None, force: bool = False, per_model: bool = True, progress: bool = True,
                 **compute: Any) -> Path:
    """Compute ``profile`` (cached), render every page, publish ``out``; returns ``out/index.html``.

    ``results_dir``: the results store (default ``$KSTAR_RESULTS/<profile>``). ``scheduler``: ``local`` (a
    LocalCluster sized to the machine), ``inprocess``, or a Dask scheduler address. ``compute``: overrides of the
    profile's compute options (device, batch_size, workers, precision, bootstrap).
    """
    from ..pipeline import load_profile
    from ..pipeline.aggregate import aggregate
    from ..pipeline.run import open_client, run_grid, run_jobs
    from ..pipeline.tasks import build_grid, store_for
    from .pages import render_index, render_model_page

    prof = load_profile(profile).with_compute(**compute)
    folder = ReportFolder(out, force=force)
    folder.check()
    store = store_for(prof, results_dir)
    # the notebooks re-open the profile by reference: a user's YAML by its absolute path, a built-in one by name
    profile_ref = prof.origin if prof.origin not in ("built-in", "a mapping") else prof.name
    with open_client(scheduler, n_workers) as client:
        run_grid(build_grid(prof), store, client, progress)
        with folder.staging() as stage:
            results = aggregate(prof, store, stage / "results")
            jobs = [(name, title, str(stage), profile_ref) for name, title in NOTEBOOKS]
            pages = run_jobs(render_notebook_page, jobs, client, progress, desc="notebooks")
            model_pages = []
            if per_model:
                ids = [m["id"] for m in Results(results).summary["models"] if m["results"]]
                names = run_jobs(render_model_page, [(str(results), i, str(stage)) for i in ids], client, progress,
                                 desc="model pages")
                labels = {m["id"]: m["label"] for m in Results(results).summary["models"]}
                model_pages = [(n, labels[i]) for n, i in zip(names, ids)]
            render_index(results, stage, pages, model_pages)
    return folder.out / "index.html"
