"""Aggregation: result files -> the report's tables (CSV) and its summary (JSON), with intervals and verdicts.

Only reads the results store (CLIP_benchmark's run-then-build split): rerunning it is cheap, and it can run while
tasks of another profile are still being computed. Written into an output folder:

    robustness.csv          one row per (model, threat model): accuracies with intervals, Gamma, Gamma' with intervals
    generalisation.csv      one row per (model, data set): accuracy with its interval, Gamma, Gamma'
    summary_table.csv       Table 1: one row per model
    failed.csv              tasks that failed, with their error
    kstar/<slug(model)>@<slug(data)>.json   each k* result (lossless KStarResult JSON), for the per-model pages
    features/<slug(model)>/ Figure 2's features (summary.json lists every file and folder: readers look them up there)
    summary.json            claims with their evidence and verdicts, parameters, the design, counts
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..plumbing import atomic_write_text, stable_hash, write_json
from .profiles import Profile
from .results import ResultStore
from .tasks import Task, build_grid

# RobustBench evaluates CIFAR on the full 10,000-image test set and ImageNet on its 5,000-image list.
PUBLISHED_EVAL_SIZE = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 5_000}
# open_clip's results table names its columns by its own data-set names (letters and digits); where kstar's registered
# name differs by more than punctuation, the column is named here
ZEROSHOT_COLUMNS = {"imagenet": "imagenet1k"}


SLUG_MAX_BYTES = 100
_HASHED = re.compile(r"-[0-9a-f]{10}$")  # how a hashed name ends: an id ending so is hashed too, never mistaken


def slug(text: str) -> str:
    """A file name for a model or data id, one per id on any file system.

    An id of lower-case letters, digits and ``-_.+`` (at most SLUG_MAX_BYTES bytes, not "." or "..", not ending as
    a hashed name does) is its own name. Any other id (with a character replaced, upper case, too long, or empty)
    keeps a readable form followed by a hash of the whole id: "a/b" and "a_b", or "ViT" and "vit" on a
    case-insensitive disk, would otherwise write one file for two models. "@" is replaced too: it joins the model's
    and the data set's names in ``kstar/``."""
    text = str(text)
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)
    if (safe == text == text.lower() and text not in ("", ".", "..") and len(text.encode()) <= SLUG_MAX_BYTES
            and not _HASHED.search(text)):
        return text
    head = safe.encode()[: SLUG_MAX_BYTES - 11].decode(errors="ignore").strip(".") or "id"
    return f"{head}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _kstar_columns(kstar: dict) -> dict:
    from ..kstar import KStarResult

    res = KStarResult.from_dict(kstar)
    counts = res.pattern_counts
    intervals = getattr(res, "intervals", None) or {}
    g_lo, g_hi = intervals.get("gamma", (math.nan, math.nan))
    p_lo, p_hi = intervals.get("gamma_prime", (math.nan, math.nan))
    return {"gamma": res.gamma_true, "gamma_lo": g_lo, "gamma_hi": g_hi, "gamma_prime": res.gamma_approx,
            "gamma_prime_lo": p_lo, "gamma_prime_hi": p_hi, "fractured": counts["Fractured"],
            "overlapped": counts["Overlapped"], "clustered": counts["Clustered"],
            "latent_1nn_accuracy": float(np.mean(np.asarray(res.kstar) >= 2)), "n_samples": len(res.kstar)}


def _interval(successes: float, n: float) -> tuple[float, float]:
    from ..evidence import wilson_interval

    if n is None or not np.isfinite(successes) or not n:
        return math.nan, math.nan
    lo, hi = wilson_interval(successes, n)
    return float(lo), float(hi)


def _accuracy_columns(prefix: str, accuracy: float | None, n: int | None) -> dict:
    accuracy = math.nan if accuracy is None else float(accuracy)
    lo, hi = _interval(accuracy * n if n else math.nan, n) if n else (math.nan, math.nan)
    return {prefix: accuracy, f"{prefix}_lo": lo, f"{prefix}_hi": hi, f"{prefix}_n": n}


def collect_tables(profile: Profile, store: ResultStore, tasks: list[Task] | None = None) -> dict[str, Any]:
    """Read every result of ``profile``'s grid into DataFrames (missing and failed tasks leave their rows out and are
    listed in ``failed``), and count the zoo models trained on each machine (``trained_on``)."""
    tasks = tasks if tasks is not None else build_grid(profile)
    records = {t.key: store.read(t.key) for t in tasks}
    evaluations = {t.model.id: records[t.key]["result"] for t in tasks if t.kind == "evaluate" and records[t.key]}
    robust_rows, general_rows, kstar_files, failed, trained_on = [], [], {}, [], {}
    for task in tasks:
        record = records[task.key]
        if record is None:
            failure = store.failure(task.key)
            failed.append({"task": task.title, "model": task.model.id, "data": task.data.id if task.data else "",
                           "kind": task.kind, "error": failure["error"] if failure else "not computed"})
            continue
        if task.kind == "train":
            machine = record["result"].get("machine") or "not recorded"
            trained_on[machine] = trained_on.get(machine, 0) + 1
        if task.kind != "kstar":
            continue
        result, model, data = record["result"], task.model, task.data
        kstar_files[(model.id, data.id)] = record
        base = {"model": model.id, "label": model.label, "source": model.source, **_info_columns(model),
                **_kstar_columns(result["kstar"])}
        if model.family == "robustness" and data.shift is None:
            robust_rows += _robustness_rows(task, base, evaluations.get(model.id))
        if model.family == "generalisation" or data.shift is not None or \
                (profile.zoo is not None and model.info.get("config") == "standard"):
            if model.source == "builtin":
                acc = _accuracy_columns("accuracy", result.get("accuracy"), result.get("accuracy_n"))
            else:
                acc = _accuracy_columns("accuracy", _published_zeroshot(model, data), None)
            short = (data.shift or "clean") if model.source == "builtin" else data.dataset  # axis labels
            general_rows.append({**base, "data": data.id, "set": short, "shift": data.shift or "clean", **acc})
    robustness = by_config_then_seed(pd.DataFrame(robust_rows), pd.DataFrame(robust_rows))
    generalisation = by_config_then_seed(pd.DataFrame(general_rows), pd.DataFrame(general_rows))
    return {"robustness": robustness, "generalisation": generalisation, "failed": pd.DataFrame(failed),
            "kstar": kstar_files, "table": summary_table(robustness, generalisation), "trained_on": trained_on}


def _info_columns(model) -> dict:
    keys = ("config", "seed", "training", "norm", "eps", "width", "train_fraction", "pretrained")
    return {k: model.info[k] for k in keys if k in model.info}


def _robustness_rows(task: Task, base: dict, evaluation: dict | None) -> list[dict]:
    model = task.model
    rows = []
    if model.source == "builtin":
        if evaluation is None:
            return []
        clean = _accuracy_columns("clean_accuracy", evaluation["clean_accuracy"], evaluation["clean_n"])
        for norm, found in evaluation["robust"].items():
            rows.append({**base, "threat_model": norm, "eval_eps": found["eps"], **clean,
                         **_accuracy_columns("robust_accuracy", found["accuracy"], found["n"]),
                         "attack": found["version"], "autoattack_flags": len(found.get("flags", []))})
        return rows
    published = _published_robust(model)
    n = PUBLISHED_EVAL_SIZE.get(model.options.get("dataset"))
    rows.append({**base, "threat_model": model.options["threat_model"], "eval_eps": published.get("eps", math.nan),
                 **_accuracy_columns("clean_accuracy", published.get("clean"), n),
                 **_accuracy_columns("robust_accuracy", published.get("robust"), n),
                 "attack": "AutoAttack (RobustBench, published)", "autoattack_flags": 0})
    return rows


def _published_robust(model) -> dict:
    """RobustBench's published accuracies (fractions) unless the profile gives the model's own."""
    from ..accuracy import robustbench_accuracy

    own_clean, own_robust = model.info.get("clean_accuracy"), model.info.get("robust_accuracy")
    acc = robustbench_accuracy()
    hit = acc[(acc["model"] == model.name) & (acc["threat_model"] == model.options["threat_model"])]
    if "dataset" in acc.columns:
        hit = hit[hit["dataset"] == model.options.get("dataset", "cifar10")]
    clean = float(hit["clean_accuracy"].iloc[0]) / 100 if len(hit) else math.nan
    robust = float(hit["autoattack_accuracy"].iloc[0]) / 100 if len(hit) else math.nan
    eps = float(Fraction(str(hit["eps"].iloc[0]))) if len(hit) and "eps" in hit.columns else math.nan  # "8/255"
    return {"clean": own_clean if own_clean is not None else clean,
            "robust": own_robust if own_robust is not None else robust, "eps": eps}


def _published_zeroshot(model, data) -> float:
    from ..accuracy import openclip_zeroshot

    zs = openclip_zeroshot()
    hit = zs[(zs["model"] == model.name) & (zs["pretrained"] == model.options.get("pretrained"))]
    column = ZEROSHOT_COLUMNS.get(data.dataset, re.sub(r"[^a-z0-9]", "", data.dataset.lower()))
    return float(hit[column].iloc[0]) if len(hit) and column in hit.columns else math.nan


def summary_table(robustness: pd.DataFrame, generalisation: pd.DataFrame) -> pd.DataFrame:
    """Table 1: one row per model, its k* summary on the clean evaluated set and its accuracies."""
    rows: dict[str, dict] = {}
    k_cols = ["gamma", "gamma_lo", "gamma_hi", "gamma_prime", "gamma_prime_lo", "gamma_prime_hi", "fractured",
              "overlapped", "clustered", "latent_1nn_accuracy"]
    for _, r in robustness.iterrows():
        row = rows.setdefault(r["model"], {"model": r["model"], "label": r["label"],
                                           **{c: r[c] for c in k_cols},
                                           "clean_accuracy": r["clean_accuracy"]})
        row[f"robust_accuracy_{r['threat_model']}"] = r["robust_accuracy"]
    if not generalisation.empty:
        clean = generalisation[generalisation["shift"] == "clean"]
        for _, r in clean.iterrows():
            rows.setdefault(r["model"], {"model": r["model"], "label": r["label"], **{c: r[c] for c in k_cols},
                                         "clean_accuracy": r["accuracy"]})
        shifted = generalisation[generalisation["shift"] != "clean"]
        if not shifted.empty:
            for model, acc in shifted.groupby("model")["accuracy"].mean().items():
                if model in rows:
                    rows[model]["mean_shifted_accuracy"] = acc
    return by_config_then_seed(pd.DataFrame(list(rows.values())), pd.concat([robustness, generalisation]))


def by_config_then_seed(table: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """``table``'s rows with each configuration's seeds together and in seed order (the grid runs seed by seed, which
    scattered a configuration's three rows over every table and heatmap), configurations in their first-seen order;
    the rows of one model keep their order. ``info`` gives each ``model``'s ``config`` and ``seed``; models without a
    configuration (RobustBench, OpenCLIP) keep their place."""
    if table.empty or not {"model", "config", "seed"} <= set(info.columns):
        return table
    first = info.drop_duplicates("model").set_index("model")
    config, seed = table["model"].map(first["config"]), table["model"].map(first["seed"])
    group = [str(c) if pd.notna(c) else f"\0{m}" for c, m in zip(config, table["model"])]
    group_rank = {g: i for i, g in enumerate(dict.fromkeys(group))}
    keys = pd.DataFrame({"group": [group_rank[g] for g in group],
                         "seed": pd.to_numeric(seed, errors="coerce").fillna(0).to_numpy(),
                         "place": range(len(table))})
    order = keys.sort_values(["group", "seed", "place"]).index
    return table.iloc[order].reset_index(drop=True)


def _remove_previous_results(out: Path, keep: set[str], keep_features: set[str] = frozenset()) -> None:
    """Delete the k* result files and Figure 2 feature folders an earlier aggregation into ``out`` wrote and this one
    does not (a model left out of the profile, a name made otherwise): only what its summary.json lists, only inside
    ``kstar/`` and ``features/``."""
    try:
        previous = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(previous, dict):
        return
    for model in previous.get("models", []):
        for entry in model.get("results", []) if isinstance(model, dict) else []:
            name = listed_name(entry.get("file") if isinstance(entry, dict) else None, "kstar/")
            if name and name not in keep:
                (out / "kstar" / name).unlink(missing_ok=True)
    features = previous.get("features", {})
    for folder in features.values() if isinstance(features, dict) else []:
        name = listed_name(folder, "features/")
        if name and name not in keep_features and (out / "features" / name).is_dir():
            shutil.rmtree(out / "features" / name)


def listed_name(path: Any, folder: str) -> str | None:
    """The one name below ``folder`` that a summary lists as ``folder + name``; None for anything else (a path)."""
    name = str(path or "").removeprefix(folder)
    listed = str(path or "").startswith(folder) and name == Path(name).name and name not in ("", ".", "..")
    return name if listed else None


def aggregate(profile: Profile, store_root: str | Path, out_dir: str | Path) -> Path:
    """Write the tables, the k* results and the summary of ``profile`` from its store into ``out_dir``."""
    from .claims import claims_summary

    store = ResultStore(store_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = build_grid(profile)
    parts = collect_tables(profile, store, tasks)
    for name, file in (("robustness", "robustness.csv"), ("generalisation", "generalisation.csv"),
                       ("table", "summary_table.csv"), ("failed", "failed.csv")):
        atomic_write_text(out / file, parts[name].to_csv(index=False))
    kstar_files, feature_folders = {}, {}
    names = {(m, d): f"{slug(m)}@{slug(d)}.json" for m, d in parts["kstar"]}
    copied = {slug(m) for (m, _), r in parts["kstar"].items() if r["result"].get("features")}
    _remove_previous_results(out, keep=set(names.values()), keep_features=copied)
    for (model_id, data_id), record in parts["kstar"].items():
        name = names[model_id, data_id]
        kstar_files.setdefault(model_id, []).append({"data": data_id, "file": f"kstar/{name}"})
        write_json(out / "kstar" / name, {"model": record["model"], "data": record["data"],
                                          "indices": record["result"].get("indices"),
                                          "gallery": record["result"].get("gallery", {}),
                                          "kstar": record["result"]["kstar"]})
        if record["result"].get("features"):
            target = out / "features" / slug(model_id)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(store.features_dir(record["result"]["features"]), target)
            feature_folders[model_id] = f"features/{target.name}"
    models = {t.model.id: t.model for t in tasks}
    claims = claims_summary(profile, parts["robustness"], parts["generalisation"])
    atomic_write_text(out / "evidence.csv", pd.DataFrame(claims.pop("evidence_table")).to_csv(index=False))
    selection = sorted((m, d, r["result"].get("indices") or []) for (m, d), r in parts["kstar"].items())
    summary = {
        "profile": profile.name, "title": profile.title, "description": profile.description,
        "profile_digest": profile.digest(), "origin": profile.origin, "created": _now(),
        "threshold": 0.5, "compare": [m for m in profile.compare if m in kstar_files], "features": feature_folders,
        "models": [{"id": m.id, "label": m.label, "family": m.family, "source": m.source, "info": m.info,
                    "results": kstar_files.get(m.id, [])} for m in models.values()],
        "failed": parts["failed"].to_dict(orient="records"),
        "counts": {"tasks": len(tasks), "failed": len(parts["failed"])},
        "shifts": _shift_descriptions(profile), "trained_on": parts["trained_on"],
        "data_hash": stable_hash([(d, i) for _, d, i in selection])[:16], **claims,
    }
    write_json(out / "summary.json", summary)
    return out


def _shift_descriptions(profile: Profile) -> dict[str, str]:
    if profile.zoo is None:
        return {}
    from ..zoo.shifts import SHIFTS

    return {"clean": "the unchanged test split", **{s: SHIFTS[s].description for s in profile.zoo.shifts}}
