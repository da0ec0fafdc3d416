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

import numpy as np
import pandas as pd

from .. import evidence as ev
from .profiles import Profile

COMBINE_RULE = ("A claim tested under several threat models is reproduced (or not reproduced) only when every "
                "threat model's verdict agrees; otherwise it is inconclusive.")


def _units(profile: Profile) -> tuple[str, str | None]:
    if profile.zoo is not None and len(profile.zoo.seeds) > 1:
        return "model-seed pairs", "config"
    return "models", None


GROUP_UNITS = {"config": "configurations"}  # what a resampled group is, in sentences


def _evidence(frame: pd.DataFrame, x: str, y: str, units: str, group: str | None, x_name: str, seed: int,
              controls: dict | None = None, y_name: str = "Gamma'") -> ev.Evidence:
    groups = frame[group] if group and group in frame else None
    named = GROUP_UNITS.get(group or "", "groups")
    if controls:
        return ev.partial_correlation(frame[x], frame[y], controls, units=units, seed=seed, x_name=x_name,
                                      y_name=y_name, groups=groups, group_units=named)
    return ev.correlation_evidence(frame[x], frame[y], units=units, groups=groups, seed=seed, x_name=x_name,
                                   y_name=y_name, group_units=named)


def _entry(name: str, e: ev.Evidence) -> dict:
    return {"name": name, "verdict": ev.verdict(e), "sentence": ev.claim_sentence(name, e),
            "evidence": e.to_dict()}


def _combine(verdicts: list[str]) -> str:
    if verdicts and all(v == ev.REPRODUCED for v in verdicts):
        return ev.REPRODUCED
    if verdicts and all(v == ev.NOT_REPRODUCED for v in verdicts):
        return ev.NOT_REPRODUCED
    return ev.INCONCLUSIVE


def _qualifier(verdict: str, partials: list[tuple[str, dict, str, dict]]) -> str:
    """What the headline says beside a verdict about its partial tests (``partials``: control, entry, the scope it
    was tested in (e.g. a threat model) and its evidence row, which carries ``p_holm`` from :func:`add_holm`):
    * "reproduced": the controls it does not survive, with those partial tests' own verdicts ("but not beyond latent
      1-NN accuracy (the partial test below is inconclusive)");
    * "inconclusive": the partial tests that are reproduced all the same, and whether they stay below the level after
      Holm's adjustment (otherwise a reader of the headline alone would not know they exist).
    """
    if verdict == ev.REPRODUCED:
        lost = [(control, entry) for control, entry, _, _ in partials if entry["verdict"] != ev.REPRODUCED]
        if not lost:
            return ""
        controls = " or ".join(dict.fromkeys(control for control, _ in lost))
        verdicts = " or ".join(sorted({entry["verdict"] for _, entry in lost}))
        tests = "test below is" if len(lost) == 1 else "tests below are"
        return f"but not beyond {controls} (the partial {tests} {verdicts})"
    if verdict != ev.INCONCLUSIVE:
        return ""
    held = [(control, scope, row) for control, entry, scope, row in partials if entry["verdict"] == ev.REPRODUCED]
    if not held:
        return ""
    by_scope: dict[str, list[str]] = {}
    for control, scope, _ in held:
        by_scope.setdefault(scope, []).append(control)
    where = "; ".join(f"controlling for {' or '.join(controls)}" + (f" under {scope}" if scope else "")
                      for scope, controls in by_scope.items())
    surviving = [row for _, _, row in held if row["p_holm"] < ev.significance_level()]
    holm = ("and stays below the level after Holm's adjustment" if len(surviving) == len(held) else
            "but not after Holm's adjustment over the claim's tests: exploratory" if not surviving else
            f"and {len(surviving)} of these {len(held)} tests stay below the level after Holm's adjustment")
    return f"though {where} the relation is reproduced, {holm}"


def robustness_claim(profile: Profile, robustness: pd.DataFrame) -> dict | None:
    if robustness.empty:
        return None
    units, group = _units(profile)
    seed = profile.compute.seed
    parts, details, rows, partials = [], [], [], []
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
            partials.append((control, partial, tm, rows[-1]))
    verdict = _combine([p["verdict"] for p in parts])
    sentence = " ".join(p["sentence"] for p in parts)
    add_holm(rows)
    return {"id": "robustness", "title": "More robust models fracture concepts less", "verdict": verdict,
            "qualifier": _qualifier(verdict, partials), "sentence": sentence, "details": details,
            "parts": parts, "rows": rows}


def generalisation_claim(profile: Profile, generalisation: pd.DataFrame) -> dict | None:
    if generalisation.empty:
        return None
    units, group = _units(profile)
    seed = profile.compute.seed
    rows, details = [], []
    shifted = generalisation[generalisation["shift"] != "clean"]
    if profile.zoo is not None and not shifted.empty:
        means = shifted_set_means(generalisation)
        x_name = "mean accuracy on the shifted test sets"
        y_name = "mean Gamma' over the shifted sets"
        # Pooling sets mixes set difficulty into both variables (a hard set lowers accuracy and raises Gamma' for
        # every model): each set's mean is taken out of both first, and whole configurations are resampled.
        centred = shifted.copy()
        for column in ("accuracy", "gamma_prime"):
            centred[column] = centred[column] - centred.groupby("shift")[column].transform("mean")
        name = "shifted sets pooled, each set's mean removed"
        e = _entry(f"Generalisation, {name}", _evidence(centred, "accuracy", "gamma_prime",
                                                         "(model-seed pair, shifted set) pairs", group,
                                                         "accuracy (relative to its set's mean)", seed,
                                                         y_name="Gamma' (relative to its set's mean)"))
        details.append(e["sentence"])
        rows.append({"claim": "generalisation", "threat_model": "", "test": name, **_row(e)})
    else:
        agg = {"accuracy": ("accuracy", "mean"), "gamma_prime": ("gamma_prime", "mean"),
               "latent_1nn_accuracy": ("latent_1nn_accuracy", "mean")}
        if group:
            agg["config"] = (group, "first")
        means = generalisation.groupby("model").agg(**agg).reset_index()
        x_name = ("mean zero-shot accuracy over the data sets" if profile.zoo is None
                  else "mean accuracy over the evaluated sets")
        y_name = "mean Gamma' over the data sets"
    main = _entry("Generalisation", _evidence(means, "accuracy", "gamma_prime", units, group, x_name, seed,
                                              y_name=y_name))
    # the 1-NN identity (SPEC) builds part of any accuracy-Gamma' relation into the metric: say what is left; in the
    # built-in study, capacity and data raise clean and shifted accuracy together: say what is left beyond clean
    controls = {"latent 1-NN accuracy": means["latent_1nn_accuracy"]}
    clean_accuracy = _clean_accuracy(generalisation, means["model"]) if not shifted.empty else None
    if clean_accuracy is not None:
        controls["clean accuracy"] = clean_accuracy
    partials = []
    for control, values in controls.items():
        partial = _entry(f"Generalisation, controlling for {control}",
                         _evidence(means, "accuracy", "gamma_prime", units, group, x_name, seed,
                                   {control: values.to_numpy()}, y_name=y_name))
        partials.append((control, partial, "", {"claim": "generalisation", "threat_model": "",
                                                "test": f"partial | {control}", **_row(partial)}))
    for _, partial, _, row in reversed(partials):
        details.insert(0, partial["sentence"])
        rows.insert(0, row)
    rows.insert(0, {"claim": "generalisation", "threat_model": "", "test": "main", **_row(main)})
    for data, part in generalisation.groupby("data", sort=False):
        clean = "shift" in part and (part["shift"] == "clean").all()
        e = _entry(f"Within {data}" + (" (the clean test set: accuracy in distribution, not generalisation)"
                                       if clean else ""),
                   _evidence(part, "accuracy", "gamma_prime", units, group, f"accuracy on {data}", seed))
        details.append(e["sentence"])
        rows.append({"claim": "generalisation", "threat_model": "", "test": f"within {data}", **_row(e)})
    add_holm(rows)
    return {"id": "generalisation", "title": "More general models fracture concepts less", "verdict": main["verdict"],
            "qualifier": _qualifier(main["verdict"], partials), "sentence": main["sentence"], "details": details,
            "parts": [main], "rows": rows}


def shifted_set_means(generalisation: pd.DataFrame) -> pd.DataFrame:
    """Per model, the mean accuracy, Gamma' and latent 1-NN accuracy over the shifted sets (the built-in study's main
    generalisation test runs on these), with its configuration, seed and label; empty without shifted sets."""
    shifted = generalisation[generalisation["shift"] != "clean"] if "shift" in generalisation else generalisation[:0]
    columns = {"accuracy": ("accuracy", "mean"), "gamma_prime": ("gamma_prime", "mean"),
               "latent_1nn_accuracy": ("latent_1nn_accuracy", "mean")}
    columns.update({c: (c, "first") for c in ("config", "seed", "label") if c in shifted})
    return shifted.groupby("model").agg(**columns).reset_index()


def _clean_accuracy(generalisation: pd.DataFrame, models: pd.Series) -> pd.Series | None:
    """Each model's accuracy on the clean test set, in the order of ``models``; None where the table has no clean
    set (OpenCLIP) or a model lacks it."""
    clean = generalisation[generalisation["shift"] == "clean"].drop_duplicates("model").set_index("model")
    values = models.map(clean["accuracy"])
    return None if values.isna().any() or values.empty else values.reset_index(drop=True)


def _row(entry: dict) -> dict:
    e = entry["evidence"]
    grouped = bool(e.get("n_groups"))
    return {"verdict": entry["verdict"], "rho": e["rho"], "ci_lo": e["ci"][0], "ci_hi": e["ci"][1],
            "p_value": e["p_value"],
            "p_tests": f"means of {e['n_groups']} {e['group_units']}" if grouped else f"{e['n']} {e['units']}",
            "rho_of_means": e["extra"].get("group_mean_rho", math.nan) if grouped else math.nan,
            "n": e["n"], "units": e["units"] + (f" in {e['n_groups']} {e['group_units']}" if grouped else "")}


def caveats(profile: Profile, robustness: pd.DataFrame, generalisation: pd.DataFrame,
            evidence_rows: list[dict] | None = None) -> list[str]:
    """What a reader must keep in mind, said rather than left to the reader; ``evidence_rows`` (the evidence table)
    lets the 1-NN identity caveat say what controlling for it left of each claim."""
    out = []
    frames = [f for f in (robustness, generalisation) if not f.empty]
    if profile.zoo is not None:
        z = profile.zoo
        if len(z.seeds) > 1:
            out.append(f"Seeds: every configuration is trained with {len(z.seeds)} seeds ({', '.join(map(str, z.seeds))}); "
                       "seeds of one configuration are not independent evidence, so the figures show the spread over "
                       "seeds and the intervals resample whole configurations. A seed is shared across "
                       "configurations: it chooses the same training images (and the same random streams) in every "
                       "configuration, so all configurations' seed k saw one subset, and the intervals cover the "
                       f"spread of these {len(z.seeds)} subsets only, not of the training data's draw in general.")
        else:
            out.append("Seeds: every configuration is trained with a single seed, so the spread over training seeds is "
                       "not measured; a different seed can move Gamma' by more than its bootstrap interval.")
        attack = ("AutoAttack's standard version" if z.attack_version == "standard" else
                  f"AutoAttack's {z.attack_version.replace('+', ' and ')} (at the standard version's settings; the "
                  "full standard version can only give equal or lower robust accuracy)")
        out.append("Another machine trains other models: the zoo is trained on CPU where the report is built, and "
                   "float32 training rounds differently under another instruction set or thread count, so a rebuild "
                   "elsewhere gives somewhat different per-model numbers (the footer names where these models were "
                   "trained; README's \"What the built-in study finds\" measures one such rebuild). "
                   + ("The spread over training seeds is the fair guide to how far that moves a model, and the claims' "
                      "intervals, which resample whole configurations with their seeds, reflect that kind of spread; "
                      "but they are recomputed from the models each build trains, so a test near the verdict rule's "
                      "boundaries, or near 0.05 after Holm's adjustment, can come out differently on another machine."
                      if len(z.seeds) > 1 else
                      "With one seed per configuration, nothing here measures how far that moves a model, and any "
                      "verdict can change with a rebuild."))
        out.append(f"Attack sample size: robust accuracy is {attack} on {z.attack_samples} test images per model, good "
                   f"to about +-{100 * 1.96 * math.sqrt(0.25 / z.attack_samples):.0f} points (95%, worst case); the "
                   "Wilson intervals are drawn as error bars.")
    if frames:
        every = pd.concat(frames)
        per_class = every["n_samples"] / every[["fractured", "overlapped", "clustered"]].sum(axis=1)
        out.append(f"Samples per class: k* is computed on about {round(float(per_class.median()))} evaluated samples "
                   "per class; Gamma' from that many has a bootstrap interval of the width shown beside every value. "
                   "That interval covers the choice of evaluated samples only, not the training's randomness: "
                   + ("models that differ only in their seed can lie further apart than their intervals, which is "
                      "why the claims' intervals resample whole configurations."
                      if profile.zoo is not None and len(profile.zoo.seeds) > 1 else
                      "a model trained again with another seed can lie outside it."))
        out.append(regime_caveat(robustness, generalisation))
        out.append("Gamma' is the tested coefficient, as in the paper's Figures 3 and 4: it weighs every concept "
                   "alike. Gamma (the skew of all samples pooled) is shown in the tables but not tested; it can rank "
                   "models differently, since one large or extreme class moves it more.")
    out.append("The 1-NN identity: on data without distance ties the fraction of samples with k* >= 2 equals the "
               "leave-one-out 1-NN accuracy of the latent space (k* >= 2 says that the sample's nearest neighbour is "
               "of its own class), so part of any relation between Gamma' and accuracy is built into the metric; each "
               "claim is therefore also tested as a partial correlation controlling for latent 1-NN accuracy, "
               "reported beside it" + (" (for generalisation, each model's mean latent 1-NN accuracy over the shifted "
                                       "sets, where its accuracy and Gamma' are means too)"
                                       if "shift" in generalisation and (generalisation["shift"] != "clean").any()
                                       else "") + "." + _identity_results(evidence_rows or []))
    confound = _clean_confound(generalisation, evidence_rows or [])
    if confound:
        out.append(confound)
    if evidence_rows:
        out.append(multiple_tests_caveat(evidence_rows))
    return out


def _clean_confound(generalisation: pd.DataFrame, rows: list[dict]) -> str:
    """Where models that are better on the shifted sets are also better on the clean set, the main generalisation
    test cannot tell generalising from being a better model in distribution: say how closely the two go together and
    what the test controlling for clean accuracy left."""
    partial = next((r for r in rows if r["claim"] == "generalisation" and r["test"] == "partial | clean accuracy"),
                   None)
    if partial is None:
        return ""
    means = shifted_set_means(generalisation)  # the models of that partial test, which had every clean accuracy
    clean = _clean_accuracy(generalisation, means["model"])
    rho = clean.rank().corr(means["accuracy"].rank())
    between = ""
    if "config" in means and not np.isfinite(partial["p_value"]):
        configs = means.assign(clean=clean.to_numpy()).groupby("config")[["clean", "accuracy"]].mean()
        between = (f" Between configurations it cannot be asked at all: over the {len(configs)} configuration means "
                   f"clean and shifted accuracy are in the same order (Spearman rho = "
                   f"{ev.format_number(configs['clean'].rank().corr(configs['accuracy'].rank()))}), so this design "
                   "cannot separate generalising from clean accuracy there, and the partial test has no permutation "
                   "test.")
    return (f"Clean and shifted accuracy: in this study the models that do better on the shifted sets also do better "
            f"on the clean test set (Spearman rho = {ev.format_number(rho)} over {len(means)} models), so the main "
            "generalisation test alone cannot tell generalising from being a better model in distribution. "
            f"Controlling for clean accuracy: {partial['verdict']} (partial Spearman rho = "
            f"{ev.format_number(partial['rho'])}, 95% CI [{ev.format_number(partial['ci_lo'])}, "
            f"{ev.format_number(partial['ci_hi'])}])." + between)


def add_holm(rows: list[dict]) -> None:
    """Add each test's Holm-adjusted p (``p_holm``, in place), the family being the tests of its claim."""
    for claim in dict.fromkeys(r["claim"] for r in rows):
        family = [r for r in rows if r["claim"] == claim]
        for r, adjusted in zip(family, ev.holm_adjusted([r["p_value"] for r in family])):
            r["p_holm"] = float(adjusted)


def multiple_tests_caveat(rows: list[dict]) -> str:
    """How many tests the report makes, that each verdict uses its own p unadjusted, and, per claim, which decided
    tests stay below the verdict rule's level after Holm's adjustment within the claim (``rows`` carry ``p_holm``,
    see :func:`add_holm`)."""
    alpha = ev.significance_level()
    claims = list(dict.fromkeys(r["claim"] for r in rows))
    decided = [r for r in rows if r["verdict"] in (ev.REPRODUCED, ev.NOT_REPRODUCED)]
    counts = ", ".join(f"{sum(r['claim'] == c for r in rows)} for {c}" for c in claims)
    per_claim = []
    for claim in claims:
        mine = [r for r in decided if r["claim"] == claim]
        kept = [r["test"] + (f" under {r['threat_model']}" if r["threat_model"] else "") for r in mine
                if r.get("p_holm", 1.0) < alpha]
        per_claim.append(f"{claim}: " + (", ".join(kept) if kept else
                                         f"none of its {len(mine)} decided tests" if mine else "no decided test"))
    untested = sum(not np.isfinite(r["p_value"]) for r in rows)
    untested_text = (f"; {untested} of them could not be tested and are left out of the adjustment" if untested
                     else "")
    return (f"Multiple tests: the report makes {len(rows)} tests ({counts}{untested_text}), and each verdict uses its "
            f"own permutation p, not adjusted for the others ({len(decided)} of them decided). With Holm's adjustment "
            f"within each claim (the column \"p (Holm)\" of the evidence tables), the decided tests whose p stays "
            f"below {alpha:g} are, for {'; for '.join(per_claim)}. A decided test that does not stay below it is "
            "better read as exploratory.")


def _identity_results(rows: list[dict]) -> str:
    """What each claim's test controlling for latent 1-NN accuracy gave, next to its main test, in words."""
    mains = {(r["claim"], r["threat_model"]): r for r in rows if r["test"] in ("main", "Spearman")}
    said, lost = [], []
    for r in rows:
        if r["test"] != "partial | latent 1-NN accuracy":
            continue
        name = r["claim"] + (f" under {r['threat_model']}" if r["threat_model"] else "")
        said.append(f"{name}: {r['verdict']} (partial Spearman rho = {ev.format_number(r['rho'])}, 95% CI "
                    f"[{ev.format_number(r['ci_lo'])}, {ev.format_number(r['ci_hi'])}])")
        main = mains.get((r["claim"], r["threat_model"]))
        if main is not None and main["verdict"] == ev.REPRODUCED and r["verdict"] != ev.REPRODUCED:
            lost.append(name)
    if not said:
        return ""
    text = " Controlling for it: " + "; ".join(said) + "."
    if lost:
        text += (f" So the relation found for {' and '.join(lost)} may be the 1-NN identity rather than anything the "
                 "k* distribution adds beyond latent 1-NN accuracy.")
    return text


FRACTURED_GAMMA_PRIME = 0.5  # "mostly fractured" in the regime caveat: Gamma' above this


def _regime_part(frame: pd.DataFrame, what: str) -> tuple[str, float]:
    """One study's (or set's) regime in words, and its fraction of mostly fractured spaces. Each latent space is
    counted once: the robustness table lists a standard model once per threat model."""
    spaces = frame.drop_duplicates(subset=[c for c in ("model", "data") if c in frame])
    acc, gp = spaces["latent_1nn_accuracy"], spaces["gamma_prime"]
    k = int((gp > FRACTURED_GAMMA_PRIME).sum())
    text = (f"{what}: latent 1-NN accuracy {acc.min():.1%} to {acc.max():.1%} (median {acc.median():.1%}), "
            f"{k} of {len(spaces)} spaces mostly fractured (largest Gamma' {ev.format_number(gp.max())})")
    return text, k / max(len(spaces), 1)


def regime_caveat(robustness: pd.DataFrame, generalisation: pd.DataFrame) -> str:
    """Where the tested models sit against the paper's regime (mostly fractured concepts), per study and per kind of
    evaluated set, and what that means for the robustness claim."""
    parts, robust_fraction = [], None
    if not robustness.empty:
        text, robust_fraction = _regime_part(robustness, f"the robustness study ({robustness['model'].nunique()} "
                                                         "models, clean test set)")
        parts.append(text)
    if not generalisation.empty:
        if "shift" in generalisation:
            clean = generalisation[generalisation["shift"] == "clean"]
            shifted = generalisation[generalisation["shift"] != "clean"]
            if not clean.empty:
                parts.append(_regime_part(clean, "the generalisation study on its clean test set")[0])
            if not shifted.empty:
                parts.append(_regime_part(shifted, "on its shifted sets")[0])
        else:
            parts.append(_regime_part(generalisation, "the generalisation study")[0])
    text = (f"The regime: the paper reports that current vision models frequently fracture concepts, and its Figures "
            f"3 and 4 call a latent space mostly fractured where Gamma' > {FRACTURED_GAMMA_PRIME:g}. Here: "
            f"{'; '.join(parts)}.")
    if robust_fraction is not None and robust_fraction < 0.5:
        where = "entirely" if robust_fraction == 0 else "mostly"
        text += (f" The robustness claim is therefore tested {where} outside the fractured regime the paper "
                 "describes: it can neither confirm nor refute the paper there.")
    return text


def parameters(profile: Profile) -> dict[str, Any]:
    """Profile parameters shown in every page's footer."""
    params: dict[str, Any] = {"bootstrap resamples (Gamma' intervals)": profile.compute.bootstrap,
                              "bootstrap resamples (correlation intervals)": ev.CORRELATION_BOOT,
                              "permutations (correlation tests)": ev.PERMUTATIONS,
                              "precision": profile.compute.precision}
    if profile.zoo is not None:
        z = profile.zoo
        params.update(dataset=z.dataset, evaluated=f"{z.kstar_split} split, "
                      + (f"{z.kstar_per_class} per class" if z.kstar_per_class else "all samples"),
                      training_images=f"at most {z.train_limit} per model" if z.train_limit else "the whole split",
                      epochs=f"{z.epochs} (robust {z.robust_epochs})", learning_rate=z.lr, batch_size=z.batch_size,
                      pgd_steps=z.pgd_steps, linf_budgets=list(z.linf_budgets), l2_budgets=list(z.l2_budgets),
                      eval_eps=z.eval_eps, attack=f"AutoAttack {z.attack_version}, {z.attack_samples} images",
                      base_width=z.base_width, widths=list(z.widths), training_fractions=list(z.fractions),
                      latent=z.latent, shifts=list(z.shifts))
    if profile.robustbench is not None:
        params.update(robustbench=f"{len(profile.robustbench.models)} models on {profile.robustbench.dataset}")
    if profile.openclip is not None:
        params.update(openclip=f"{len(profile.openclip.models)} encoders on {', '.join(profile.openclip.datasets)}")
    return params


def claims_summary(profile: Profile, robustness: pd.DataFrame, generalisation: pd.DataFrame) -> dict:
    """Everything the report says about the claims, for summary.json."""
    claims = [c for c in (robustness_claim(profile, robustness), generalisation_claim(profile, generalisation)) if c]
    rows = [r for c in claims for r in c.pop("rows")]  # each claim added its rows' p_holm (one family per claim)
    seeds = {"compute": profile.compute.seed}
    if profile.zoo is not None:
        seeds["training"] = list(profile.zoo.seeds)
    return {"claims": claims, "verdict_rule": f"{ev.VERDICT_RULE} {COMBINE_RULE}",
            "evidence_table": rows, "caveats": caveats(profile, robustness, generalisation, rows),
            "parameters": parameters(profile), "seeds": seeds, "x_labels": x_labels(profile)}


def x_labels(profile: Profile) -> dict[str, str]:
    if profile.zoo is not None:
        z = profile.zoo
        eps = ", ".join(f"{n} eps = {e:g}" for n, e in z.eval_eps.items())
        return {"robustness": f"AutoAttack robust accuracy ({eps}; {z.attack_version}, {z.attack_samples} images)",
                "generalisation": "accuracy on the (shifted) test set"}
    return {"robustness": "AutoAttack robust accuracy (RobustBench, published)",
            "generalisation": "zero-shot accuracy (open_clip results table)"}
