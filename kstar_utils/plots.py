"""Every figure of the report, as functions that take results and return a matplotlib Figure.

Figures are created with ``pyplot`` so that a notebook's inline backend shows them; assign the return value
(``fig = ...``) in a notebook so each figure is shown once. Colours of the three regions follow the paper: blue for
fractured (> t), red for overlapped, green for clustered (< -t).
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import metrics
from .errors import KStarInputError
from .kstar import KStarResult

REGION_FILL = {"Fractured": "#4c72b0", "Overlapped": "#dd5555", "Clustered": "#55a868"}


def _skew_text(skew: float) -> str:
    if math.isnan(skew):
        return "Skew = n/a"
    if math.isinf(skew):
        return "Skew = -inf" if skew < 0 else "Skew = +inf"
    return f"Skew = {skew:.2f}"


def kstar_distributions(result: KStarResult, ax: plt.Axes | None = None, title: str | None = None,
                        max_classes: int | None = None) -> Figure:
    """Per-class k* distributions (Figure 2): horizontal violins with a boxen plot inside, x from 0 to 1, a star at
    the class mean, and "Skew = ..." with the pattern beside each class."""
    import seaborn as sns

    table = result.per_class.copy()
    if max_classes is not None:
        table = table.head(max_classes)
    labels = [str(v) for v in table["label"]]
    frame = pd.DataFrame({"class": result.labels.astype(str), "kstar_norm": result.kstar_norm})
    frame = frame[frame["class"].isin(labels)]
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(labels) + 1.4))
    else:
        fig = ax.figure
    palette = {lab: REGION_FILL[p] for lab, p in zip(labels, table["pattern"])}
    sns.violinplot(data=frame, x="kstar_norm", y="class", order=labels, hue="class", palette=palette, legend=False,
                   orient="h", cut=0, inner=None, density_norm="width", linewidth=0.6, ax=ax, alpha=0.35)
    sns.boxenplot(data=frame, x="kstar_norm", y="class", order=labels, hue="class", palette=palette, legend=False,
                  orient="h", width=0.25, showfliers=False, ax=ax, linewidth=0.5)
    ax.scatter(table["mean"], range(len(labels)), marker="*", s=140, color="gold", edgecolor="black", zorder=5,
               label="mean")
    for i, (skew, pattern) in enumerate(zip(table["skew"], table["pattern"])):
        ax.text(1.02, i, f"{_skew_text(skew)}  {pattern}", va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalised k* (k* / n_c)")
    ax.set_ylabel("class")
    ax.set_title(title or f"k* distributions: Gamma = {result.gamma_true:.2f}, Gamma' = {result.gamma_approx:.2f}")
    fig.tight_layout()
    return fig


def embedding_scatter(features: np.ndarray, labels: Sequence, method: str = "tsne", seed: int = 0,
                      ax: plt.Axes | None = None, title: str | None = None, max_points: int = 3000) -> Figure:
    """t-SNE or UMAP of features, coloured by class (the comparison of Figure 2)."""
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels).astype(str)
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x, y = x[keep], y[keep]
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30, max(5, len(x) // 5))).fit_transform(x)
    elif method == "umap":
        import umap

        xy = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1), n_jobs=1).fit_transform(x)
    else:
        raise KStarInputError(f"unknown method {method!r}; use 'tsne' or 'umap'.")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4.5))
    else:
        fig = ax.figure
    classes = sorted(set(y))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        sel = y == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=cmap(i % cmap.N), label=c, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or method.upper())
    if len(classes) <= 12:
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    fig.tight_layout()
    return fig


def _regions(ax: plt.Axes, threshold: float, lo: float, hi: float) -> None:
    ax.axhspan(threshold, max(hi, threshold + 1), color=REGION_FILL["Fractured"], alpha=0.12, lw=0)
    ax.axhspan(-threshold, threshold, color=REGION_FILL["Overlapped"], alpha=0.12, lw=0)
    ax.axhspan(min(lo, -threshold - 1), -threshold, color=REGION_FILL["Clustered"], alpha=0.12, lw=0)
    ax.set_ylim(min(lo, -threshold) - 0.25, max(hi, threshold) + 0.25)


def gamma_regions(frame: pd.DataFrame, x: str, y: str = "gamma_prime", hue: str | None = None,
                  label: str | None = "model", threshold: float = metrics.DEFAULT_THRESHOLD,
                  xlabel: str | None = None, title: str | None = None, ax: plt.Axes | None = None) -> Figure:
    """Gamma' of each model against an accuracy (Figures 3 and 4), on the blue/red/green regions, with the Spearman
    and Pearson correlation and n in the title."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
    else:
        fig = ax.figure
    values = frame[y].replace([np.inf, -np.inf], np.nan)
    _regions(ax, threshold, float(np.nanmin(values)) if values.notna().any() else -1,
             float(np.nanmax(values)) if values.notna().any() else 1)
    groups = frame.groupby(hue, sort=False) if hue else [(None, frame)]
    markers = "osD^vP*X"
    for i, (name, part) in enumerate(groups):
        ax.scatter(part[x], part[y], marker=markers[i % len(markers)], s=50, edgecolor="black", zorder=3,
                   label=name if hue else None)
        if label and label in part:
            for _, r in part.iterrows():
                ax.annotate(str(r[label]), (r[x], r[y]), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
    c = metrics.correlation(frame[x], frame[y])
    stats_text = (f"Spearman {c['spearman']:.2f} (p={c['spearman_p']:.2g}), Pearson {c['pearson']:.2f} "
                  f"(p={c['pearson_p']:.2g}), n={c['n']}") if c["n"] >= 3 and not math.isnan(c["spearman"]) \
        else f"n={c['n']}: too few points for a correlation"
    ax.set_title((title + "\n" if title else "") + stats_text, fontsize=9)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel("Gamma' (approximate skewness coefficient)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=REGION_FILL[p], alpha=0.3) for p in metrics.PATTERNS]
    legend_regions = ax.legend(handles, [f"mostly {p.lower()}" for p in metrics.PATTERNS], loc="lower left",
                               fontsize=7, frameon=False)
    if hue:
        ax.add_artist(legend_regions)
        ax.legend(loc="upper right", fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def framework_figure(x2d: np.ndarray, labels: Sequence, result: KStarResult) -> Figure:
    """Figure 1: the latent space (points), k* per sample, the per-class k* distributions and Gamma / Gamma'."""
    import seaborn as sns

    y = np.asarray(labels).astype(str)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3), gridspec_kw={"width_ratios": [1.1, 1.1, 1.3]})
    classes = list(result.per_class["label"].astype(str))
    cmap = plt.get_cmap("tab10")
    for i, c in enumerate(classes):
        sel = y == c
        axes[0].scatter(x2d[sel, 0], x2d[sel, 1], s=6, color=cmap(i), label=c)
    axes[0].set_title("1. latent space (features)")
    axes[0].legend(fontsize=7, markerscale=2, frameon=False)
    sc = axes[1].scatter(x2d[:, 0], x2d[:, 1], c=result.kstar_norm, s=6, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(sc, ax=axes[1], label="k* / n_c")
    axes[1].set_title("2. k* of every sample")
    frame = pd.DataFrame({"class": y, "kstar_norm": result.kstar_norm})
    for i, c in enumerate(classes):
        sns.kdeplot(frame[frame["class"] == c]["kstar_norm"], ax=axes[2], color=cmap(i), clip=(0, 1), cut=0,
                    label=f"{c}: {_skew_text(result.per_class.iloc[i]['skew'])}, {result.per_class.iloc[i]['pattern']}",
                    warn_singular=False)
    axes[2].set_xlim(0, 1)
    axes[2].set_xlabel("normalised k*")
    axes[2].legend(fontsize=7, frameon=False)
    axes[2].set_title(f"3. k* distribution per class\n4. Gamma = {result.gamma_true:.2f} (pooled), "
                      f"Gamma' = {result.gamma_approx:.2f} (mean of classes)", fontsize=9)
    fig.tight_layout()
    return fig
