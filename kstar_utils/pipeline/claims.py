"""The paper's two claims, tested on a profile's tables: evidence with intervals, a verdict each, and the caveats.

Claim 1 (robustness): Gamma' falls as robust accuracy rises. Tested per threat model (each model under its own attack,
never pooled across norms), over model-seed pairs with a bootstrap that resamples whole configurations (seeds of one
configuration are not independent evidence), also as partial correlations controlling for clean accuracy and for the
latent 1-NN accuracy (which k* contains by construction).

Claim 2 (generalisation): Gamma' falls as accuracy on other data sets rises. Built-in study: over model-seed pairs,
the mean accuracy on the shifted test sets against the mean Gamma' there; also per data set, and on the clean and the
shifted sets separately. OpenCLIP: over models, the mean zero-shot accuracy against the mean Gamma'; also per data set.

The verdict of each claim is decided by :data:`kstar_utils.evidence.VERDICT_RULE`; a claim tested on several threat
models is "reproduced" (or "not reproduced") only when every threat model agrees, otherwise "inconclusive".
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .. import evidence as ev
from .profiles import Profile

COMBINE_RULE = ("A claim tested under several threat models is reproduced (or not reproduced) only when every "
                "threat model's verdict agrees; otherwise it is inconclusive.")


def _units(profile: Profile) -> tuple[str, str | None]:
    if profile.zoo is not None and len(profile.zoo.seeds) > 1:
        return "model-seed pairs", "config"
    return "models", None


def _evidence(frame: pd.DataFrame, x: str, y: str, units: str, group: str | None, x_name: str, seed: int,
              controls: dict | None = None) -> ev.Evidence:
    groups = frame[group] if group and group in frame else None
    if controls:
        return ev.partial_correlation(frame[x], frame[y], controls, units=units, seed=seed, x_name=x_name,
                                      y_name="Gamma'", groups=groups)
    return ev.correlation_evidence(frame[x], frame[y], units=units, groups=groups, seed=seed, x_name=x_name,
                                   y_name="Gamma'")


def _entry(name: str, e: ev.Evidence) -> dict:
    return {"name": name, "verdict": ev.verdict(e), "sentence": ev.claim_sentence(name, e),
            "evidence": e.to_dict()}


def _combine(verdicts: list[str]) -> str:
    if verdicts and all(v == ev.REPRODUCED for v in verdicts):
        return ev.REPRODUCED
    if verdicts and all(v == ev.NOT_REPRODUCED for v in verdicts):
        return ev.NOT_REPRODUCED
    return ev.INCONCLUSIVE


def robustness_claim(profile: Profile, robustness: pd.DataFrame) -> dict | None:
    if robustness.empty:
        return None
    units, group = _units(profile)
    seed = profile.compute.seed
    parts, details, rows = [], [], []
    for tm, part in robustness.groupby("threat_model", sort=True):
        eps = part["eval_eps"].dropna()
        x_name = f"{tm} robust accuracy" + (f" (eps = {eps.iloc[0]:g})" if len(eps) else "")
        main = _entry(f"Robustness under {tm}", _evidence(part, "robust_accuracy", "gamma_prime", units, group,
                                                          x_name, seed))
        parts.append(main)
        rows.append({"claim": "robustness", "threat_model": tm, "test": "Spearman", **_row(main)})
        for control, column in (("clean accuracy", "clean_accuracy"), ("latent 1-NN accuracy", "latent_1nn_accuracy")):
            sub = part.dropna(subset=[column])
            partial = _entry(f"Robustness under {tm}, controlling for {control}",
                             _evidence(sub, "robust_accuracy", "gamma_prime", units, group, x_name, seed,
                                       {control: sub[column].to_numpy()}))
            details.append(partial["sentence"])
            rows.append({"claim": "robustness", "threat_model": tm, "test": f"partial | {control}", **_row(partial)})
    verdict = _combine([p["verdict"] for p in parts])
    sentence = " ".join(p["sentence"] for p in parts)
    return {"id": "robustness", "title": "More robust models fracture concepts less", "verdict": verdict,
            "sentence": sentence, "details": details, "parts": parts, "rows": rows}


def generalisation_claim(profile: Profile, generalisation: pd.DataFrame) -> dict | None:
    if generalisation.empty:
        return None
    units, group = _units(profile)
    seed = profile.compute.seed
    rows, details = [], []
    shifted = generalisation[generalisation["shift"] != "clean"]
    if profile.zoo is not None and not shifted.empty:
        means = shifted.groupby("model").agg(accuracy=("accuracy", "mean"), gamma_prime=("gamma_prime", "mean"),
                                             config=("config", "first")).reset_index()
        x_name = "mean accuracy on the shifted test sets"
        main = _entry("Generalisation", _evidence(means, "accuracy", "gamma_prime", units, group, x_name, seed))
        clean = generalisation[generalisation["shift"] == "clean"]
        for name, frame, u, g in (("clean test set only", clean, units, group),
                                  ("shifted sets pooled", shifted, "(model, shifted set) pairs", "model")):
            e = _entry(f"Generalisation, {name}", _evidence(frame, "accuracy", "gamma_prime", u, g,
                                                             f"accuracy ({name})", seed))
            details.append(e["sentence"])
            rows.append({"claim": "generalisation", "threat_model": "", "test": name, **_row(e)})
    else:
        means = generalisation.groupby("model").agg(accuracy=("accuracy", "mean"),
                                                    gamma_prime=("gamma_prime", "mean")).reset_index()
        x_name = "mean zero-shot accuracy over the data sets"
        main = _entry("Generalisation", _evidence(means, "accuracy", "gamma_prime", "models", None, x_name, seed))
    rows.insert(0, {"claim": "generalisation", "threat_model": "", "test": "main", **_row(main)})
    for data, part in generalisation.groupby("data", sort=False):
        e = _entry(f"Within {data}", _evidence(part, "accuracy", "gamma_prime", units, group,
                                               f"accuracy on {data}", seed))
        details.append(e["sentence"])
        rows.append({"claim": "generalisation", "threat_model": "", "test": f"within {data}", **_row(e)})
    return {"id": "generalisation", "title": "More general models fracture concepts less", "verdict": main["verdict"],
            "sentence": main["sentence"], "details": details, "parts": [main], "rows": rows}


def _row(entry: dict) -> dict:
    e = entry["evidence"]
    return {"verdict": entry["verdict"], "rho": e["rho"], "ci_lo": e["ci"][0], "ci_hi": e["ci"][1],
            "p_value": e["p_value"], "n": e["n"], "units": e["units"]}


def caveats(profile: Profile, robustness: pd.DataFrame, generalisation: pd.DataFrame) -> list[str]:
    """What a reader must keep in mind, said rather than left to the reader."""
    out = []
    frames = [f for f in (robustness, generalisation) if not f.empty]
    if profile.zoo is not None:
        z = profile.zoo
        if len(z.seeds) > 1:
            out.append(f"Seeds: every configuration is trained with {len(z.seeds)} seeds ({', '.join(map(str, z.seeds))}); "
                       "seeds of one configuration are not independent evidence, so the figures show the spread over "
                       "seeds and the intervals resample whole configurations.")
        else:
            out.append("Seeds: every configuration is trained with a single seed, so the spread over training seeds is "
                       "not measured; a different seed can move Gamma' by more than its bootstrap interval.")
        attack = ("AutoAttack's standard version" if z.attack_version == "standard" else
                  f"AutoAttack's {z.attack_version.replace('+', ' and ')} (at the standard version's settings; the "
                  "full standard version can only give equal or lower robust accuracy)")
        out.append(f"Attack sample size: robust accuracy is {attack} on {z.attack_samples} test images per model, good "
                   f"to about +-{100 * 1.96 * math.sqrt(0.25 / z.attack_samples):.0f} points (95%, worst case); the "
                   "Wilson intervals are drawn as error bars.")
    if frames:
        n = pd.concat(frames)["n_samples"]
        classes = 10
        out.append(f"Samples per class: k* is computed on about {int(n.median()) // classes} evaluated samples per "
                   "class; Gamma' from that many has a bootstrap interval of the width shown beside every value.")
        onenn = pd.concat(frames)["latent_1nn_accuracy"]
        fractured = float((pd.concat(frames)["gamma_prime"] > 0.5).mean())
        out.append(f"The regime: the latent 1-NN accuracy of these models ranges {onenn.min():.1%} to {onenn.max():.1%} "
                   f"(median {onenn.median():.1%}) and {fractured:.0%} of the evaluated spaces are mostly fractured "
                   "(Gamma' > 0.5). The paper finds current vision models mostly fracture concepts.")
    out.append("The 1-NN identity: on data without distance ties the fraction of samples with k* >= 2 equals the "
               "leave-one-out 1-NN accuracy of the latent space (SPEC), so part of any relation between Gamma' and "
               "accuracy is built into the metric; the partial correlations control for it.")
    return out


def parameters(profile: Profile) -> dict[str, Any]:
    """Profile parameters shown in every page's footer."""
    params: dict[str, Any] = {"bootstrap": profile.compute.bootstrap, "precision": profile.compute.precision}
    if profile.zoo is not None:
        z = profile.zoo
        params.update(dataset=z.dataset, evaluated=f"{z.kstar_split} split, "
                      + (f"{z.kstar_per_class} per class" if z.kstar_per_class else "all samples"),
                      epochs=f"{z.epochs} (robust {z.robust_epochs})", linf_budgets=list(z.linf_budgets),
                      l2_budgets=list(z.l2_budgets), eval_eps=z.eval_eps,
                      attack=f"AutoAttack {z.attack_version}, {z.attack_samples} images", width=z.base_width,
                      latent=z.latent, shifts=list(z.shifts))
    if profile.robustbench is not None:
        params.update(robustbench=f"{len(profile.robustbench.models)} models on {profile.robustbench.dataset}")
    if profile.openclip is not None:
        params.update(openclip=f"{len(profile.openclip.models)} encoders on {', '.join(profile.openclip.datasets)}")
    return params


def claims_summary(profile: Profile, robustness: pd.DataFrame, generalisation: pd.DataFrame) -> dict:
    """Everything the report says about the claims, for summary.json."""
    claims = [c for c in (robustness_claim(profile, robustness), generalisation_claim(profile, generalisation)) if c]
    rows = [r for c in claims for r in c.pop("rows")]
    seeds = {"compute": profile.compute.seed}
    if profile.zoo is not None:
        seeds["training"] = list(profile.zoo.seeds)
    return {"claims": claims, "verdict_rule": f"{ev.VERDICT_RULE} {COMBINE_RULE}",
            "evidence_table": rows, "caveats": caveats(profile, robustness, generalisation),
            "parameters": parameters(profile), "seeds": seeds, "x_labels": x_labels(profile)}


def x_labels(profile: Profile) -> dict[str, str]:
    if profile.zoo is not None:
        z = profile.zoo
        eps = ", ".join(f"{n} eps = {e:g}" for n, e in z.eval_eps.items())
        return {"robustness": f"AutoAttack robust accuracy ({eps}; {z.attack_version}, {z.attack_samples} images)",
                "generalisation": "accuracy on the (shifted) test set"}
    return {"robustness": "AutoAttack robust accuracy (RobustBench, published)",
            "generalisation": "zero-shot accuracy (open_clip results table)"}
