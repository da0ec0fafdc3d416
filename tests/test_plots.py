"""Figures: Figure 1's synthetic patterns, readability (text size at display width, no overlapping or clipped text),
alt text, error bars, the heatmap / lines of Figure 4 and the fracture gallery."""

from __future__ import annotations

import math
import re
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from conftest import torch_threads_after_in_worker

from kstar_utils import compute_kstar, metrics, neighbours, plots
from kstar_utils.errors import KStarInputError
from kstar_utils.evidence import add_accuracy_intervals
from kstar_utils.synthetic import FRAMEWORK_INTENDED, correlated_table, framework_example


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _readable(fig) -> None:
    """The house rules for every figure: >= 9 pt as shown 900 px wide, nothing overlapping or cut off, alt text."""
    assert fig.get_figwidth() <= plots.FIGURE_WIDTH_IN + 1e-9
    assert plots.readability_problems(fig) == []
    assert len(plots.alt_text(fig)) > 40
    png = plots.figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width_px = int.from_bytes(png[16:20], "big")
    assert width_px == round(fig.get_figwidth() * plots.SAVE_DPI)


def _stand_in_nearest(features, labels, queries, metric):
    """Test stand-in for neighbours.nearest_foreign_index: direct float64 distances, nearest sample of another class."""
    x = np.asarray(features, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.asarray(labels)
    out = []
    for q in queries:
        d = np.sqrt(((x - x[q]) ** 2).sum(axis=1))
        d[y == y[q]] = np.inf
        out.append(int(np.argmin(d)))
    return np.array(out)


# ------------------------------------------------------------------------------------------------------- checkers
def test_checkers_catch_small_overlapping_and_clipped_text():
    fig = plt.figure(figsize=(9, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "tiny", fontsize=6)
    ax.text(0.5, 0.5, "on top", fontsize=12)
    fig.text(0.98, 0.5, "cut off at the right edge", fontsize=12)
    assert any("tiny" in s for s in plots.small_texts(fig))
    assert ("tiny", "on top") in plots.overlapping_texts(fig)
    assert "cut off at the right edge" in plots.clipped_texts(fig)
    assert len(plots.readability_problems(fig)) == 3
    # The same 9 pt text is too small on a figure shown 900 px wide when the figure is 14 inches wide.
    wide = plt.figure(figsize=(14, 3))
    wide.text(0.1, 0.5, "nine", fontsize=9)
    assert plots.small_texts(wide) and not plots.small_texts(wide, display_px=1400)
    assert plots.alt_text(wide) == "Figure" and plots.alt_text(wide, "a wide figure") == "a wide figure"


# ------------------------------------------------------------------------------------------------------- Figure 1
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_framework_example_lands_in_its_intended_patterns(seed):
    x, y = framework_example(seed=seed)
    result = compute_kstar(x, y, method="exact", device="cpu")
    skew = dict(zip(result.per_class["label"], result.per_class["skew"]))
    assert skew["fractured"] > 0.5 + 0.2
    assert abs(skew["overlapped"]) <= 0.5 - 0.2
    assert -np.inf < skew["clustered"] < -0.5 - 0.2  # finite: its density has a curve
    assert dict(zip(result.per_class["label"], result.per_class["pattern"])) == FRAMEWORK_INTENDED


def test_framework_figure_is_readable_and_says_the_rule_does_not_apply():
    x, y = framework_example()
    result = compute_kstar(x, y, method="exact", device="cpu")
    fig = plots.framework_figure(x, y, result, intended=FRAMEWORK_INTENDED)
    _readable(fig)
    cap = plots.caption(fig)
    assert "does not change Gamma'" in cap and "Not as intended" not in cap
    assert f"Gamma' = {result.gamma_approx:.2f}" in cap
    texts = " ".join(t.get_text() for t in plots._visible_texts(fig))
    assert "Gamma'" in texts and "k* of each sample" in texts and "without it" not in texts
    # Every class has a curve in the density panel (the issue: the clustered class had none).
    density_ax = next(ax for ax in fig.axes if ax.get_xlabel().startswith("normalised k*"))
    assert len(density_ax.get_lines()) == 3


def test_framework_figure_shows_gamma_prime_with_and_without_the_inf_rule():
    x, y = framework_example(separated=True)
    result = compute_kstar(x, y, method="exact", device="cpu")
    skew = dict(zip(result.per_class["label"], result.per_class["skew"]))
    assert skew["clustered"] == -math.inf
    fig = plots.framework_figure(x, y, result, intended=FRAMEWORK_INTENDED)
    _readable(fig)
    rule = plots.gamma_prime_rule(result.per_class)
    finite = [s for s in skew.values() if np.isfinite(s)]
    assert rule["changed"] and rule["plain_mean"] == -math.inf
    assert rule["with_rule"] == pytest.approx((min(finite) + sum(finite)) / 3)
    assert rule["finite_mean"] == pytest.approx(np.mean(finite))
    cap = plots.caption(fig)
    assert "must stay finite" in cap and "-inf without it" in cap and f"{rule['with_rule']:.2f}" in cap
    texts = " ".join(t.get_text() for t in plots._visible_texts(fig))
    assert "without it Gamma' = -inf" in texts and "every k*/n_c = 1" in texts


def test_framework_caption_flags_a_concept_that_misses_its_pattern():
    x, y = framework_example()
    result = compute_kstar(x, y, method="exact", device="cpu")
    fig = plots.framework_figure(x, y, result, intended={"overlapped": "Clustered"})
    assert "'overlapped' was built to be Clustered but is Overlapped" in plots.caption(fig)
    with pytest.raises(KStarInputError):
        plots.framework_figure(np.zeros((10, 3)), y[:10], result)


def test_framework_schematic_names_every_stage():
    fig = plots.framework_schematic()
    _readable(fig)
    texts = " ".join(t.get_text() for t in plots._visible_texts(fig))
    for stage in ("Features", "k* of each sample", "k* distribution", "Gamma:", "Gamma':"):
        assert stage in texts


# ------------------------------------------------------------------------------------------------------- Figure 2
def test_kstar_distributions_and_tsne_are_readable(rng):
    x = rng.normal(size=(45, 6)) + np.repeat(np.eye(6)[:3] * 2.0, 15, axis=0)
    y = np.repeat(["cat", "dog", "ship"], 15)
    result = compute_kstar(x, y, method="exact", device="cpu")
    fig = plots.kstar_distributions(result)
    _readable(fig)
    assert "3 classes" in plots.alt_text(fig)
    fig2 = plots.embedding_scatter(x, y, method="tsne")
    _readable(fig2)
    assert "t-SNE projection of 45 feature vectors" in plots.alt_text(fig2)
    # Two panels of one figure (as notebook 02 draws them) collect both alt texts.
    fig3, axes = plt.subplots(1, 2, figsize=(9, 3))
    plots.kstar_distributions(result, ax=axes[0], title="A")
    plots.kstar_distributions(result, ax=axes[1], title="B")
    assert "(A)" in plots.alt_text(fig3) and "(B)" in plots.alt_text(fig3)


def test_compare_distributions_sets_two_models_side_by_side_on_one_class_axis(rng):
    x, y = rng.normal(size=(240, 4)), np.repeat(np.arange(6), 40)
    first = compute_kstar(x, y, bootstrap=50)
    second = compute_kstar(x + 2.0 * np.eye(6)[y][:, :4], y, bootstrap=50)  # classes pulled apart: more clustered
    fig = plots.compare_distributions(first, second, titles=["PGD L2 eps=0.5, seed 0", "PGD Linf eps=0.1, seed 0"])
    _readable(fig)
    left, right = fig.axes[:2]
    assert left.get_shared_y_axes().joined(left, right)  # one class axis: a concept reads across the pair
    assert [t.get_text() for t in left.get_yticklabels()] == [str(c) for c in range(6)]
    assert "PGD L2 eps=0.5, seed 0" in left.get_title() and f"Gamma' = {first.gamma_approx:.2f}" in left.get_title()
    beside = [t.get_text() for t in right.texts]
    assert len(beside) == 6 and all(t.split()[-1] in "FOC" for t in beside)
    assert "F fractured, O overlapped, C clustered" in plots.caption(fig)
    assert "share the class axis" in plots.alt_text(fig)
    with pytest.raises(KStarInputError, match="same classes"):
        plots.compare_distributions(first, compute_kstar(x[:200], y[:200]))


def test_kstar_distributions_show_bootstrap_intervals_when_present(rng):
    x = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[:2] * 2.0, 30, axis=0)
    result = compute_kstar(x, np.repeat([0, 1], 30), method="exact", device="cpu")
    result.intervals = {"gamma": (-0.5, 0.25), "gamma_prime": (-1.25, 0.5)}  # the interface metrics.py provides
    fig = plots.kstar_distributions(result)
    assert "[-1.25, 0.50]" in fig.axes[0].get_title() and "[-0.50, 0.25]" in fig.axes[0].get_title()


# --------------------------------------------------------------------------------------------------- Figures 3, 4
def _robustness_table(n_seeds: int) -> pd.DataFrame:
    a = correlated_table(10, -0.7, seed=1, n_seeds=n_seeds).assign(threat_model="Linf")
    b = correlated_table(10, 0.0, seed=2, n_seeds=n_seeds).assign(threat_model="L2")
    table = pd.concat([a, b], ignore_index=True)
    table["model"] = table["threat_model"] + "-" + table["config"]
    return table


def test_gamma_regions_draws_both_intervals_and_per_group_statistics():
    table = _robustness_table(1)
    fig = plots.gamma_regions(table, "accuracy", hue="threat_model", n="accuracy_n", xlabel="robust accuracy",
                              title="Gamma' against robust accuracy", n_boot=300, max_labels=20)
    _readable(fig)
    ax = fig.axes[0]
    title = ax.get_title(loc="left")
    assert "Linf: Spearman rho" in title and "L2: Spearman rho" in title and "n = 10 models" in title
    # Error bars: one container per group, each with x and y bars of the right lengths.
    containers = [c for c in ax.containers if c.has_xerr and c.has_yerr]
    assert len(containers) == 2
    expected = add_accuracy_intervals(table, "accuracy", "accuracy_n")
    segs = containers[0].lines[2][0].get_segments()  # the x error bars of the first group
    lo_hi = sorted((min(s[0][0], s[1][0]), max(s[0][0], s[1][0])) for s in segs)
    ref = sorted(zip(expected["accuracy_lo"][:10], expected["accuracy_hi"][:10]))
    assert np.allclose(lo_hi, ref)
    # Every model is labelled, in a column, with no overlap (checked by _readable).
    labels = {t.get_text() for t in ax.texts}
    assert set(table["model"]) <= labels
    assert "vertical bars: 95% bootstrap interval" in plots.alt_text(fig)


def test_gamma_regions_shows_the_spread_over_seeds_and_labels_only_a_few_when_crowded():
    table = _robustness_table(3)
    table["config"] = table["model"]
    fig = plots.gamma_regions(table, "accuracy", hue="threat_model", n="accuracy_n", config="config",
                              max_labels=8, n_boot=300)
    _readable(fig)
    ax = fig.axes[0]
    title = ax.get_title(loc="left")
    assert "n = 30 model-seed pairs in 10 configurations" in title and "8 of 20 points labelled" in title
    assert re.search(r"Linf: .*; p (=|<) \S+ \(means of the 10 configurations\)", plots.alt_text(fig))
    assert "large markers: the mean of a configuration's seeds, bars spanning the range over its seeds" \
        in plots.alt_text(fig)
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "Linf: mean and range over seeds" in legend_texts and "Linf: single seeds" in legend_texts
    # The mean marker of a configuration sits at the mean of its seeds.
    first = table[table["config"] == table["config"].iloc[0]]
    means = next(c for c in ax.containers if c.get_label() == "Linf: mean and range over seeds")
    xs, ys = means.lines[0].get_data()
    assert xs[0] == pytest.approx(first["accuracy"].mean()) and ys[0] == pytest.approx(first["gamma_prime"].mean())


def test_gamma_regions_with_many_groups_moves_the_statistics_to_the_caption():
    rng = np.random.default_rng(5)
    table = pd.DataFrame({"accuracy": rng.uniform(0.2, 0.9, 50), "gamma_prime": rng.normal(0, 1, 50),
                          "set": np.repeat(["clean", "noise", "blur", "rotation", "contrast"], 10),
                          "model": [f"m{i % 10}" for i in range(50)]})
    fig = plots.gamma_regions(table, "accuracy", hue="set", n_boot=200, max_labels=16, title="per set")
    _readable(fig)
    title = fig.axes[0].get_title(loc="left")
    assert "Spearman" not in title and "5 set groups: the statistics of each are in the caption" in title
    caption = plots.caption(fig)
    for name in ("clean", "noise", "blur", "rotation", "contrast"):
        assert f"{name}: Spearman rho = " in caption
    assert caption.startswith("Bands: mostly fractured") and "8 of 50 points labelled" in caption
    assert len(fig.axes[0].texts) == 8


def test_gamma_regions_by_draws_one_panel_per_set_on_one_scale():
    """Small multiples: each set its own panel with its own rho, the Gamma' scale shared and covering every point."""
    rng = np.random.default_rng(6)
    sets = ["clean", "noise", "blur", "rotation", "contrast"]
    table = pd.DataFrame({"accuracy": rng.uniform(0.2, 0.9, 60), "gamma_prime": rng.normal(0, 1, 60),
                          "set": np.repeat(sets, 12), "config": [f"c{i % 4}" for i in range(60)],
                          "model": [f"c{i % 4}-s{i % 3}" for i in range(60)]})
    table.loc[13, "gamma_prime"] = 4.0  # one extreme point in the second panel
    fig = plots.gamma_regions_by(table, "accuracy", by="set", config="config", n_boot=200, title="per set")
    _readable(fig)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(panels) == 5 and all(panels[0].get_shared_y_axes().joined(panels[0], ax) for ax in panels)
    for ax, name in zip(panels, sets):
        assert re.fullmatch(rf"{name}\nrho = \S+ \[\S+, \S+\], p (=|<) \S+", ax.get_title(loc="left"))
    assert panels[0].get_ylim()[1] > 4.0  # the shared scale covers the other panels' points
    caption = plots.caption(fig)
    assert caption.startswith("Bands: mostly fractured") and all(f"{n}: Spearman rho = " in caption for n in sets)
    assert len(fig.legends) == 1 and "One panel per set" in plots.alt_text(fig)
    with pytest.raises(KStarInputError, match="needs column 'shift'"):
        plots.gamma_regions_by(table, "accuracy", by="shift")
    table.loc[20, "accuracy"] = 0.15  # one seed near chance (0.1) in the second panel: ringed there, said below
    fig = plots.gamma_regions_by(table, "accuracy", by="set", config="config", n_boot=100, chance=0.1)
    assert "Black rings: 1 row with accuracy within 0.1 of chance." in plots.caption(fig)
    rings = [c for ax in fig.axes for c in ax.collections if c.get_label() == "accuracy within 0.1 of chance"]
    assert len(rings) == 1 and rings[0].axes is fig.axes[1]


def test_gamma_regions_names_the_group_when_one_label_appears_in_two_groups():
    table = _robustness_table(1)
    table.loc[table.index[:2], "model"] = "standard"  # as the pipeline lists a standard model under each threat model
    table.loc[table.index[:2], "threat_model"] = ["Linf", "L2"]
    fig = plots.gamma_regions(table, "accuracy", hue="threat_model", n_boot=200, max_labels=30)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "Linf: standard" in labels and "L2: standard" in labels and "standard" not in labels
    single = plots.gamma_regions(table[table.threat_model == "Linf"], "accuracy", hue="threat_model", n_boot=200,
                                 max_labels=30)
    assert "standard" in [t.get_text() for t in single.axes[0].texts]


def test_gamma_regions_keeps_the_old_call_working():
    table = _robustness_table(1).drop(columns=["gamma_prime_lo", "gamma_prime_hi"])
    fig = plots.gamma_regions(table, "accuracy", hue="threat_model", label=None, n_boot=200)
    assert not any(c.has_yerr for c in fig.axes[0].containers)
    with pytest.raises(KStarInputError):
        plots.gamma_regions(table, "missing")


def test_gamma_regions_survives_missing_and_infinite_values():
    table = correlated_table(8, -0.5, seed=0)
    table["model"] = table["config"]
    table.loc[0, "accuracy"] = np.nan
    table.loc[1, "gamma_prime"] = -np.inf
    table.loc[2, "gamma_prime_lo"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.gamma_regions(table, "accuracy", n="accuracy_n", n_boot=200)
    title = fig.axes[0].get_title(loc="left")
    assert "n = 6 models" in title and "1 row(s) with an infinite Gamma' not drawn" in title
    heat = plots.gamma_heatmap(table.assign(data="clean"))
    assert "-inf" in [t.get_text() for t in heat.axes[0].texts]


def _openclip_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for m in ["ViT-B-32 openai", "RN50 yfcc15m", "ViT-L-14 laion2b", "convnext_base", "tiny"]:
        for d in ["clean", "noise", "blur", "rotation", "contrast"]:
            for seed in range(2):
                g = float(rng.normal(0.4, 0.7))
                rows.append({"model": m, "data": d, "seed": seed, "gamma_prime": g, "gamma_prime_lo": g - 0.5,
                             "gamma_prime_hi": g + 0.5, "accuracy": 0.12 if m == "tiny" else 0.7})
    return pd.DataFrame(rows)


def test_gamma_heatmap_annotates_every_cell_and_marks_near_chance():
    table = _openclip_table()
    fig = plots.gamma_heatmap(table, chance=0.1)
    _readable(fig)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "data \u2192" in texts  # the columns' name, in the corner left of their header row
    cells = [t for t in texts if t != "data \u2192"]
    assert len(cells) == 25
    mean = table[(table.model == "RN50 yfcc15m") & (table.data == "blur")]["gamma_prime"].mean()
    assert any(t.startswith(f"{mean:.2f}\n") and "2 seeds" in t for t in cells)
    assert sum("†" in t for t in cells) == 5  # the "tiny" model's row
    assert "near chance" in plots.alt_text(fig)
    missing = table[~((table.model == "tiny") & (table.data == "blur"))]
    fig2 = plots.gamma_heatmap(missing, chance=0.1)
    assert "-" in [t.get_text() for t in fig2.axes[0].texts]  # one way of showing a missing value


def test_gamma_heatmap_never_prints_negative_zero():
    table = pd.DataFrame({"model": ["a", "b"], "data": ["clean", "clean"], "gamma_prime": [-0.001, 0.3],
                          "gamma_prime_lo": [-0.04, 0.1], "gamma_prime_hi": [0.2, 0.5]})
    texts = [t.get_text() for t in plots.gamma_heatmap(table).axes[0].texts]
    assert "0.00\n[-0.04, 0.20]" in texts and not any("-0.00" in t for t in texts)


def test_gamma_heatmap_colours_name_the_region_of_each_cell():
    """Overlapped cells share one pale red (the scatters' red region), with sharp steps at +-t to green and blue."""
    from matplotlib.colors import to_rgb

    cmap = plots.gamma_colormap(threshold=0.5, limit=2.0)

    def colour(v: float) -> tuple:
        return tuple(round(c, 2) for c in cmap((v + 2.0) / 4.0)[:3])

    pale_red = tuple(round(c, 2) for c in to_rgb(plots.HEATMAP_OVERLAPPED))
    assert colour(-0.49) == colour(0.0) == colour(0.49) == pale_red
    below, above = colour(-0.52), colour(0.52)
    assert below[1] > below[0] and below[1] > below[2]  # green: clustered
    assert above[2] > above[0] and above[2] > above[1]  # blue: fractured
    assert sum(colour(-2.0)) < sum(below) and sum(colour(2.0)) < sum(above)  # darker away from the band
    fig = plots.gamma_heatmap(pd.DataFrame({"model": ["a", "b", "c"], "data": "clean",
                                            "gamma_prime": [-1.5, 0.1, 1.5]}))
    image = fig.axes[0].images[0]
    rgb = [tuple(round(c, 2) for c in image.cmap(image.norm(v))[:3]) for v in (-1.5, 0.1, 1.5)]
    assert rgb[1] == pale_red and rgb[0] != pale_red and rgb[2] != pale_red
    assert "pale red overlapped" in plots.alt_text(fig)


def test_gamma_lines_draws_one_line_per_model_with_chance_marks():
    table = _openclip_table()
    fig = plots.gamma_lines(table, chance=0.1)
    _readable(fig)
    ax = fig.axes[0]
    lines = [c for c in ax.containers if c.get_label() in set(table["model"])]
    assert len(lines) == 5
    assert [t.get_text() for t in ax.get_xticklabels()] == ["clean", "noise", "blur", "rotation", "contrast"]
    assert "accuracy within 0.1 of chance" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert "5 points marked as near chance" in plots.alt_text(fig)


def test_chance_marks_are_explained_only_where_drawn():
    """With no model near chance, the legend has no entry for a marker drawn nowhere and the caption says so; with
    one seed near chance, the point averaging it (and the cell) is marked, though the mean is not near chance."""
    table = _openclip_table().assign(accuracy=0.7)
    lines = plots.gamma_lines(table, chance=0.1)
    assert "accuracy within 0.1 of chance" not in [t.get_text() for t in lines.legends[0].get_texts()]
    assert "no row (seed) has accuracy within 0.1 of chance" in plots.caption(lines)
    heat = plots.gamma_heatmap(table, chance=0.1)
    assert "no row has accuracy within 0.1 of chance" in plots.caption(heat)
    assert "dashed frame" not in plots.caption(heat)
    one = table.index[(table.model == "convnext_base") & (table.data == "blur") & (table.seed == 1)]
    table.loc[one, "accuracy"] = 0.15  # mean over the two seeds 0.425: far from chance, one seed near it
    lines = plots.gamma_lines(table, chance=0.1)
    assert "1 point marked as near chance" in plots.alt_text(lines)
    assert "in at least one of the point's rows (seeds)" in plots.caption(lines)
    heat = plots.gamma_heatmap(table, chance=0.1)
    assert sum("†" in t.get_text() for t in heat.axes[0].texts) == 1
    assert "in at least one of the cell's rows" in plots.caption(heat)


def test_gamma_lines_with_seeds_draws_their_mean_and_range_not_averaged_interval_bounds():
    table = _openclip_table()  # two seeds per (model, data set), each with its own bootstrap interval
    fig = plots.gamma_lines(table)
    ax = fig.axes[0]
    cell = table[(table.model == "RN50 yfcc15m") & (table.data == "blur")]["gamma_prime"]
    bars = next(c for c in ax.containers if c.get_label() == "RN50 yfcc15m")
    segments = bars.lines[2][0].get_segments()  # one vertical bar per data set, in the x order
    low, high = segments[2][0][1], segments[2][1][1]
    assert (low, high) == pytest.approx((cell.min(), cell.max()))
    assert bars.lines[0].get_data()[1][2] == pytest.approx(cell.mean())
    assert "each point: the mean of a model's 2 rows (seeds); bars: their range" in plots.caption(fig)
    assert "bootstrap" not in plots.caption(fig)
    wide = table.assign(gamma_prime=np.where(table.seed == 0, 3.0, -2.5))  # seeds far apart: no bar is cut
    bottom, top = plots.gamma_lines(wide).axes[0].get_ylim()
    assert bottom < -2.5 and top > 3.0
    one_seed = plots.gamma_lines(table[table.seed == 0])
    assert "bars: 95% bootstrap interval of Gamma'" in plots.caption(one_seed)


# --------------------------------------------------------------------------------------------- fracture gallery
def _image_set(rng, n_per_class=12, colour=False, dtype=np.uint8):
    """Small images whose class is a bright square in one corner; class 2 copies class 0 in half its samples, so
    it is fractured."""
    images, labels = [], []
    for c in range(3):
        for i in range(n_per_class):
            img = rng.integers(0, 60, size=(16, 16)).astype(np.float64)
            corner = 0 if (c == 2 and i % 2 == 0) else c
            r, q = divmod(corner, 2)
            img[r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 180
            images.append(img)
            labels.append(c)
    arr = np.clip(np.array(images), 0, 255)
    if colour:
        arr = np.stack([arr, arr * 0.5, arr[:, ::-1]], axis=-1)
    arr = arr.astype(np.uint8) if dtype == np.uint8 else (arr / 255.0).astype(dtype)
    return arr, np.array(labels)


@pytest.mark.parametrize("colour, dtype", [(False, np.uint8), (True, np.float32)])
def test_fracture_gallery_renders_pairs_with_class_names(rng, colour, dtype):
    images, labels = _image_set(rng, colour=colour, dtype=dtype)
    features = images.reshape(len(images), -1).astype(np.float64)
    result = compute_kstar(features, labels, method="exact", device="cpu")
    names = ["plane", "car", "bird"]
    fig = plots.fracture_gallery(images, labels, names, result, features, n_classes=2, n_per_class=3,
                                 nearest=_stand_in_nearest)
    _readable(fig)
    most = plots.most_fractured_classes(result, 1)[0]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 2 * 3 * 2
    first_row = titles[:6]
    assert first_row[0].startswith(names[most]) and "k* = " in first_row[0]
    # The query with the smallest k* of the most fractured class, and its true nearest foreign neighbour.
    members = np.flatnonzero(labels == most)
    q = members[np.lexsort((members, result.kstar[members]))][0]
    partner = _stand_in_nearest(features, labels, [q], "euclidean")[0]
    assert first_row[0] == f"{names[most]}\nk* = {result.kstar[q]}"
    assert first_row[1] == f"{names[labels[partner]]}\nneighbour"
    assert labels[partner] != most
    assert names[most] in plots.alt_text(fig)


def test_fracture_gallery_uses_the_neighbours_module_by_default(rng, monkeypatch):
    images, labels = _image_set(rng, n_per_class=8)
    features = images.reshape(len(images), -1).astype(np.float64)
    result = compute_kstar(features, labels, method="exact", device="cpu")
    calls = []

    def spy(feats, labs, queries, metric):
        calls.append((len(queries), metric))
        return _stand_in_nearest(feats, labs, queries, metric)

    monkeypatch.setattr(neighbours, "nearest_foreign_index", spy, raising=False)
    plots.fracture_gallery(images, labels, None, result, features, n_classes=1, n_per_class=2)
    assert calls == [(2, "euclidean")]


def test_fracture_gallery_default_neighbours_agree_with_the_direct_search(rng):
    if not hasattr(neighbours, "nearest_foreign_index"):
        pytest.skip("neighbours.nearest_foreign_index is not in this checkout yet")
    images, labels = _image_set(rng, n_per_class=8)
    features = images.reshape(len(images), -1).astype(np.float64)
    result = compute_kstar(features, labels, method="exact", device="cpu")
    names = ["plane", "car", "bird"]
    real = plots.fracture_gallery(images, labels, names, result, features, n_classes=2, n_per_class=2)
    ref = plots.fracture_gallery(images, labels, names, result, features, n_classes=2, n_per_class=2,
                                 nearest=_stand_in_nearest)
    assert [a.get_title() for a in real.axes] == [a.get_title() for a in ref.axes]


def test_fracture_gallery_rejects_unusable_images(rng):
    images, labels = _image_set(rng, n_per_class=8)
    features = images.reshape(len(images), -1).astype(np.float64)
    result = compute_kstar(features, labels, method="exact", device="cpu")
    with pytest.raises(KStarInputError, match="undo the normalisation"):
        plots.fracture_gallery(images.astype(np.float32) - 100, labels, None, result, features,
                               nearest=_stand_in_nearest)
    with pytest.raises(KStarInputError, match="same samples"):
        plots.fracture_gallery(images[:-1], labels, None, result, features, nearest=_stand_in_nearest)
    # Channels-first input (as torch gives it) is accepted.
    chw = np.repeat(images[:, None], 3, axis=1)
    fig = plots.fracture_gallery(chw, labels, None, result, features, n_classes=1, n_per_class=1,
                                 nearest=_stand_in_nearest)
    assert fig.axes


def test_region_colours_match_metrics_patterns():
    assert set(plots.REGION_FILL) == set(metrics.PATTERNS)


def test_seed_grouping_groups_by_configuration_only_with_several_seeds():
    import pandas as pd

    from kstar_utils import plots

    one_seed = pd.DataFrame({"config": ["a", "b"], "seed": [0, 0]})
    several = pd.DataFrame({"config": ["a", "a", "b"], "seed": [0, 1, 0]})
    assert plots.seed_grouping(one_seed) == {"config": None, "units": "models"}
    assert plots.seed_grouping(pd.DataFrame({"config": ["a"]})) == {"config": None, "units": "models"}
    assert plots.seed_grouping(several) == {"config": "config", "units": "model-seed pairs"}


@pytest.mark.slow
def test_umap_projection_keeps_the_callers_torch_thread_count(rng):
    """UMAP is numba code, and a parallel numba launch sets torch's thread count in the calling thread (a Dask
    worker's task thread set to 1 would then run torch on every core). With n_jobs=1 today's umap launches none, and
    the count stays 1 even without plots' guard; the guard keeps it so if a umap release runs parallel code."""
    x = rng.normal(size=(60, 5)) + np.repeat(np.eye(5)[:3] * 3.0, 20, axis=0)
    y = np.repeat(["a", "b", "c"], 20)
    threads, fig = torch_threads_after_in_worker(lambda: plots.embedding_scatter(x, y, method="umap", seed=0))
    assert threads == 1
    _readable(fig)
    assert "UMAP" in plots.alt_text(fig)


def test_a_threat_model_keeps_its_style_in_every_figure():
    """L2 drawn alone (page 03) looks as it does beside Linf (the index)."""
    table = _robustness_table(1)
    both = plots.gamma_regions(table, "accuracy", hue="threat_model", n_boot=100)
    alone = plots.gamma_regions(table[table.threat_model == "L2"], "accuracy", hue="threat_model", n_boot=100)

    def style(fig):
        bars = next(c for c in fig.axes[0].containers if str(c.get_label()).startswith("L2"))
        line = bars.lines[0]
        return line.get_color(), line.get_marker()

    assert style(both) == style(alone) == plots.GROUP_STYLES["L2"]


def test_compare_embeddings_sets_the_pair_side_by_side_and_names_the_settings(rng):
    x, y = rng.normal(size=(90, 5)), np.repeat(["a", "b", "c"], 30)
    fig = plots.compare_embeddings((x, y), (x + 1.0, y), method="tsne", titles=["model A", "model B"], seed=3)
    _readable(fig)
    left, right = fig.axes[:2]
    assert left.get_title() == "model A" and right.get_title() == "model B"
    assert left.get_position().y0 == pytest.approx(right.get_position().y0)  # side by side, not stacked
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]
    assert "t-SNE (scikit-learn, perplexity 29, PCA initialisation, seed 3) of 90 feature vectors" in plots.caption(fig)
    assert "Colours mark classes" in plots.caption(fig)


def test_near_chance_marks_accuracies_within_the_shared_margin_and_never_a_missing_one():
    """One rule for every figure and the model pages: within CHANCE_MARGIN of chance, NaN never near."""
    from kstar_utils import plots

    acc = np.array([0.1, 0.2, 0.2 + 1e-9, 0.9, np.nan])
    np.testing.assert_array_equal(plots.near_chance(acc, 0.1), [True, True, False, False, False])
    np.testing.assert_array_equal(plots.near_chance(acc, 0.1, margin=0.0), [True, False, False, False, False])
    assert plots.CHANCE_MARGIN == 0.1
