"""The report's claims and caveats (kstar_utils.pipeline.claims) on small synthetic result tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from kstar_utils import evidence
from kstar_utils.pipeline.claims import (
    caveats,
    claims_summary,
    generalisation_claim,
    regime_caveat,
    robustness_claim,
)
from kstar_utils.pipeline.profiles import load_profile

SHIFTS = ("noise", "blur", "rotation", "contrast")


@pytest.fixture(scope="module")
def profile():
    return load_profile("default")  # a zoo with three seeds: units are model-seed pairs grouped by configuration


def _space(model: str, config: str, seed: int, gamma_prime: float, onenn: float, classes: int = 5,
           n: int = 600) -> dict:
    return {"model": model, "config": config, "seed": seed, "gamma_prime": gamma_prime,
            "latent_1nn_accuracy": onenn, "n_samples": n, "fractured": classes, "overlapped": 0, "clustered": 0}


def robustness_table(rng: np.random.Generator, n_configs: int = 8) -> pd.DataFrame:
    """Per threat model: a standard model (listed under both threat models, as the pipeline lists it) and PGD
    models whose Gamma' falls with robust accuracy; no space is fractured (Gamma' < 0.5 everywhere)."""
    rows = []
    for seed in range(3):
        standard = _space(f"standard-s{seed}", "standard", seed, 0.3, 0.9)
        for tm in ("Linf", "L2"):
            rows.append({**standard, "threat_model": tm, "eval_eps": 0.1, "robust_accuracy": 0.0,
                         "clean_accuracy": 0.9})
            for c in range(n_configs - 1):
                robust = 0.1 + 0.1 * c + rng.normal(0, 0.01)
                rows.append({**_space(f"pgd-{tm}-{c}-s{seed}", f"pgd-{tm}-{c}", seed,
                                      0.2 - 0.1 * c + rng.normal(0, 0.01), 0.85 + rng.normal(0, 0.01)),
                             "threat_model": tm, "eval_eps": 0.1, "robust_accuracy": robust,
                             "clean_accuracy": 0.85})
    return pd.DataFrame(rows)


def generalisation_table(rng: np.random.Generator, within_set_relation: float) -> pd.DataFrame:
    """Six configurations x three seeds on a clean set and four shifted sets. The sets differ in difficulty (a hard set
    lowers accuracy and raises Gamma' for every model); within a set, Gamma' = -within_set_relation * accuracy +
    noise, and latent 1-NN accuracy follows accuracy."""
    rows = []
    for s, shift in enumerate(("clean", *SHIFTS)):
        for c in range(6):
            for seed in range(3):
                accuracy = 0.9 - 0.15 * s + 0.02 * c + rng.normal(0, 0.01)
                gamma_prime = 0.3 * s - within_set_relation * 0.02 * c + rng.normal(0, 0.01)
                rows.append({**_space(f"cfg{c}-s{seed}", f"cfg{c}", seed, gamma_prime, accuracy + 0.01),
                             "data": "digits/test" if shift == "clean" else f"digits/test+{shift}",
                             "shift": shift, "accuracy": accuracy})
    return pd.DataFrame(rows)


def _row(rows: list[dict], test: str, claim: str = "generalisation") -> dict:
    return next(r for r in rows if r["test"] == test and r["claim"] == claim)


def test_grouped_evidence_says_which_statistic_its_p_tested(profile):
    claim = robustness_claim(profile, robustness_table(np.random.default_rng(0)))
    main = claim["parts"][0]["evidence"]
    assert main["n_groups"] == 8 and main["group_units"] == "configurations"
    sentence = claim["parts"][0]["sentence"]
    assert "n = 24 model-seed pairs in 8 configurations" in sentence
    assert "on the means of the 8 configurations (rho of the means = " in sentence
    row = claim["rows"][0]
    assert row["p_tests"] == "means of 8 configurations" and np.isfinite(row["rho_of_means"])


def test_pooled_shifted_sets_take_out_set_difficulty_and_resample_configurations(profile):
    table = generalisation_table(np.random.default_rng(1), within_set_relation=0.0)
    # pooled raw, the sets' difficulty alone makes Gamma' fall with accuracy
    shifted = table[table["shift"] != "clean"]
    raw = evidence.correlation_evidence(shifted["accuracy"], shifted["gamma_prime"], groups=shifted["config"])
    assert raw.rho < -0.8
    rows = generalisation_claim(profile, table)["rows"]
    pooled = _row(rows, "shifted sets pooled, each set's mean removed")
    assert pooled["verdict"] != evidence.REPRODUCED and abs(pooled["rho"]) < 0.5
    assert pooled["units"] == "(model-seed pair, shifted set) pairs in 6 configurations"


def test_generalisation_is_also_tested_controlling_for_latent_1nn_accuracy(profile):
    table = generalisation_table(np.random.default_rng(2), within_set_relation=1.0)
    claim = generalisation_claim(profile, table)
    tests = [r["test"] for r in claim["rows"]]
    assert tests[:3] == ["main", "partial | latent 1-NN accuracy", "partial | clean accuracy"]
    assert "within digits/test" in tests and "clean test set only" not in tests  # the clean set is tested once
    assert any(d.startswith("Within digits/test (the clean test set: accuracy in distribution, not generalisation):")
               for d in claim["details"])
    assert claim["sentence"].startswith("Generalisation: ") and "mean Gamma' over the shifted sets" in claim["sentence"]


def test_caveats_say_what_controlling_for_1nn_accuracy_left(profile):
    rng = np.random.default_rng(3)
    summary = claims_summary(profile, robustness_table(rng), generalisation_table(rng, within_set_relation=1.0))
    identity = next(c for c in summary["caveats"] if c.startswith("The 1-NN identity"))
    rows = summary["evidence_table"]
    main, partial = _row(rows, "main"), _row(rows, "partial | latent 1-NN accuracy")
    assert f"generalisation: {partial['verdict']} (partial Spearman rho = " in identity
    lost = main["verdict"] == evidence.REPRODUCED and partial["verdict"] != evidence.REPRODUCED
    assert ("may be the 1-NN identity" in identity) == lost


def test_regime_counts_each_space_once_per_study_and_set(profile):
    rng = np.random.default_rng(4)
    rob, gen = robustness_table(rng), generalisation_table(rng, within_set_relation=1.0)
    text = regime_caveat(rob, gen)
    spaces = rob["model"].nunique()  # the standard models are listed twice, counted once
    assert spaces == 3 + 2 * 3 * 7 and f"the robustness study ({spaces} models, clean test set)" in text
    assert f"0 of {spaces} spaces mostly fractured" in text and "entirely outside the fractured regime" in text
    clean = gen[gen["shift"] == "clean"]
    k = int((clean["gamma_prime"] > 0.5).sum())
    assert f"on its clean test set: latent 1-NN accuracy {clean['latent_1nn_accuracy'].min():.1%}" in text
    assert f"{k} of {len(clean)} spaces mostly fractured" in text
    assert f"of {len(gen) - len(clean)} spaces" in text  # the shifted sets: one space per (model, set)
    summary = claims_summary(profile, rob, gen)
    assert any("about 120 evaluated samples per class" in c for c in summary["caveats"])  # 600 samples, 5 classes


def test_numbers_are_printed_as_a_reader_compares_them():
    assert evidence.format_number(-0.0004, 3) == "0.000" and evidence.format_number(-0.004) == "0.00"
    assert evidence.format_number(-0.25) == "-0.25" and evidence.format_number(float("nan")) == "n/a"
    assert evidence.format_p(0.0001) == "< 0.001" and evidence.format_p(0.0351) == "0.035"
    strong = evidence.correlation_evidence(np.arange(40), -np.arange(40) + np.sin(np.arange(40)), n_perm=2000)
    assert "permutation p < 0.001" in evidence.evidence_numbers(strong)


@pytest.mark.parametrize("partial_verdict, warned", [(evidence.INCONCLUSIVE, True), (evidence.REPRODUCED, False)])
def test_identity_caveat_warns_when_the_relation_does_not_survive_the_control(profile, partial_verdict, warned):
    numbers = {"rho": -0.5, "ci_lo": -0.8, "ci_hi": -0.2, "p_value": 0.01, "n": 18, "units": "model-seed pairs"}
    rows = [{"claim": "generalisation", "threat_model": "", "test": "main", "verdict": evidence.REPRODUCED, **numbers},
            {"claim": "generalisation", "threat_model": "", "test": "partial | latent 1-NN accuracy",
             "verdict": partial_verdict, **numbers}]
    text = next(c for c in caveats(profile, pd.DataFrame(), pd.DataFrame(), rows) if c.startswith("The 1-NN identity"))
    assert f"Controlling for it: generalisation: {partial_verdict} (partial Spearman rho = -0.50, 95% CI " \
           "[-0.80, -0.20])." in text
    assert ("So the relation found for generalisation may be the 1-NN identity" in text) == warned


def quality_only_table(rng: np.random.Generator) -> pd.DataFrame:
    """Eighteen models whose quality q alone sets clean accuracy, shifted accuracy and Gamma' (lower for better
    models): generalisation beyond clean accuracy is absent by construction."""
    rows = []
    for c in range(6):
        for seed in range(3):
            q = rng.uniform(0, 1)
            for s, shift in enumerate(("clean", *SHIFTS)):
                accuracy = 0.6 + 0.3 * q - 0.1 * s + rng.normal(0, 0.002)
                gamma_prime = 0.5 - q + 0.2 * s + rng.normal(0, 0.002)
                rows.append({**_space(f"cfg{c}-s{seed}", f"cfg{c}", seed, gamma_prime, rng.uniform(0.5, 0.9)),
                             "data": "digits/test" if shift == "clean" else f"digits/test+{shift}",
                             "shift": shift, "accuracy": accuracy})
    return pd.DataFrame(rows)


def test_generalisation_controls_for_clean_accuracy_and_says_so_beside_the_verdict(profile):
    table = quality_only_table(np.random.default_rng(7))
    claim = generalisation_claim(profile, table)
    assert claim["verdict"] == evidence.REPRODUCED  # better models are better everywhere ...
    clean = _row(claim["rows"], "partial | clean accuracy")
    assert clean["verdict"] != evidence.REPRODUCED  # ... and nothing is left beyond clean accuracy
    assert "not beyond" in claim["qualifier"] and "clean accuracy" in claim["qualifier"]
    summary = claims_summary(profile, pd.DataFrame(), table)
    confound = next(c for c in summary["caveats"] if c.startswith("Clean and shifted accuracy"))
    assert "(Spearman rho = 1.00 over 18 models)" in confound
    assert f"Controlling for clean accuracy: {clean['verdict']} (partial Spearman rho = " in confound


def test_a_verdict_that_survives_its_controls_carries_no_qualifier(profile):
    claim = robustness_claim(profile, robustness_table(np.random.default_rng(0)))
    partials = [r for r in claim["rows"] if r["test"].startswith("partial")]
    assert claim["verdict"] == evidence.REPRODUCED and len(partials) == 4
    assert all(r["verdict"] == evidence.REPRODUCED for r in partials) and claim["qualifier"] == ""


def test_openclip_style_tables_have_no_clean_accuracy_control(profile):
    table = generalisation_table(np.random.default_rng(8), within_set_relation=1.0)
    table = table.assign(shift="clean")  # as OpenCLIP data sets are listed: no shifted set
    tests = [r["test"] for r in generalisation_claim(profile, table)["rows"]]
    assert "partial | clean accuracy" not in tests and "partial | latent 1-NN accuracy" in tests


def test_multiple_tests_caveat_counts_the_tests_and_names_what_holm_keeps(profile):
    rng = np.random.default_rng(3)
    summary = claims_summary(profile, robustness_table(rng), generalisation_table(rng, within_set_relation=1.0))
    rows = summary["evidence_table"]
    text = next(c for c in summary["caveats"] if c.startswith("Multiple tests"))
    per_claim = {c: sum(r["claim"] == c for r in rows) for c in ("robustness", "generalisation")}
    untested = sum(not np.isfinite(r["p_value"]) for r in rows)  # controls that leave nothing to test
    assert f"the report makes {len(rows)} tests ({per_claim['robustness']} for robustness, " \
           f"{per_claim['generalisation']} for generalisation" + (
               f"; {untested} of them could not be tested and are left out of the adjustment)" if untested else ")") \
        in text
    for claim in per_claim:
        family = [r for r in rows if r["claim"] == claim]
        expected = evidence.holm_adjusted([r["p_value"] for r in family])
        assert np.allclose([r["p_holm"] for r in family], expected, equal_nan=True)
    kept = [r for r in rows if r["verdict"] != evidence.INCONCLUSIVE and r["p_holm"] < 0.05]
    assert kept, "these synthetic relations are strong: some tests must survive the adjustment"
    for r in kept:
        assert r["test"] + (f" under {r['threat_model']}" if r["threat_model"] else "") in text
    from kstar_utils.pipeline.claims import multiple_tests_caveat
    decided = sum(r["claim"] == "robustness" and r["verdict"] != evidence.INCONCLUSIVE for r in rows)
    none = multiple_tests_caveat([dict(r, p_holm=0.5) for r in rows])
    assert f"for robustness: none of its {decided} decided tests; for generalisation: none of its " in none


def test_shifted_set_means_are_the_points_of_the_main_generalisation_test(profile):
    from kstar_utils.pipeline.claims import shifted_set_means

    table = generalisation_table(np.random.default_rng(9), within_set_relation=1.0)
    means = shifted_set_means(table)
    assert len(means) == 18 and {"model", "config", "seed", "accuracy", "gamma_prime"} <= set(means.columns)
    first = table[(table["model"] == "cfg0-s0") & (table["shift"] != "clean")]
    row = means.set_index("model").loc["cfg0-s0"]
    assert row["accuracy"] == pytest.approx(first["accuracy"].mean())
    assert row["gamma_prime"] == pytest.approx(first["gamma_prime"].mean())
    main = _row(generalisation_claim(profile, table)["rows"], "main")
    rho = means["accuracy"].rank().corr(means["gamma_prime"].rank())
    assert main["n"] == 18 and main["rho"] == pytest.approx(rho)
    assert shifted_set_means(table[table["shift"] == "clean"]).empty


def test_a_zoo_report_says_another_machine_trains_other_models(profile):
    rng = np.random.default_rng(5)
    tables = robustness_table(rng), generalisation_table(rng, within_set_relation=1.0)
    caveats = claims_summary(profile, *tables)["caveats"]
    machine = next(c for c in caveats if c.startswith("Another machine trains other models"))
    assert "footer names where" in machine and "resample whole configurations with their seeds" in machine
    one_seed = profile.replace(zoo=dataclasses.replace(profile.zoo, seeds=(0,)))
    caveats = claims_summary(one_seed, *tables)["caveats"]
    assert "nothing here measures how far" in next(c for c in caveats if c.startswith("Another machine"))


def test_headline_qualifiers_say_what_the_partial_tests_found():
    """Beside "reproduced": the controls it does not survive, with the partial tests' own verdict words; beside
    "inconclusive": partial tests that are reproduced all the same, and whether Holm's adjustment keeps them."""
    from kstar_utils.pipeline.claims import _qualifier, add_holm

    def partial(control, verdict, scope, p):
        return control, {"verdict": verdict}, scope, {"claim": "c", "p_value": p}

    def qualifier(verdict, partials, rows):  # the claim's rows carry their Holm-adjusted p, as the claims add it
        add_holm(rows)
        return _qualifier(verdict, partials)

    lost = [partial("latent 1-NN accuracy", evidence.INCONCLUSIVE, "", 0.03),
            partial("clean accuracy", evidence.INCONCLUSIVE, "", 0.03)]
    assert qualifier(evidence.REPRODUCED, lost, [r for *_, r in lost]) == (
        "but not beyond latent 1-NN accuracy or clean accuracy (the partial tests below are inconclusive)")
    one = [partial("clean accuracy", evidence.NOT_REPRODUCED, "", 0.5)]
    assert qualifier(evidence.REPRODUCED, one, [r for *_, r in one]).endswith(
        "(the partial test below is not reproduced)")
    held = [partial("clean accuracy", evidence.REPRODUCED, "L2", 0.032),
            partial("latent 1-NN accuracy", evidence.REPRODUCED, "L2", 0.031),
            partial("clean accuracy", evidence.INCONCLUSIVE, "Linf", 0.2)]
    rows = [r for *_, r in held] + [{"claim": "c", "p_value": p} for p in (0.9, 1.0, 0.07)]
    assert qualifier(evidence.INCONCLUSIVE, held, rows) == (
        "though controlling for clean accuracy or latent 1-NN accuracy under L2 the relation is reproduced, but not "
        "after Holm's adjustment over the claim's tests: exploratory")
    strong = [partial("clean accuracy", evidence.REPRODUCED, "L2", 0.001)]
    strong_rows = [r for *_, r in strong] + [{"claim": "c", "p_value": 0.5}]
    assert qualifier(evidence.INCONCLUSIVE, strong, strong_rows).endswith(
        "and stays below the level after Holm's adjustment")
    assert qualifier(evidence.INCONCLUSIVE, [], []) == "" and qualifier(evidence.NOT_REPRODUCED, held, rows) == ""
