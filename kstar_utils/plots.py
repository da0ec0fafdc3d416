"""Every figure of the report, as functions that take results and return a matplotlib Figure.

Conventions (for notebooks and the report builder)
--------------------------------------------------
* Figures are created with ``pyplot`` so that a notebook's inline backend shows them; assign the return value
  (``fig = ...``) in a notebook so each figure is shown once. All use constrained layout.
* **Display size.** Figures are at most :data:`FIGURE_WIDTH_IN` (9 in) wide and meant to be shown about
  :data:`DISPLAY_WIDTH_PX` (900 px) wide; every text is at least :data:`MIN_FONT_PT` (9 pt) as shown there
  (:func:`small_texts` checks it). Save with :func:`figure_png` (:data:`SAVE_DPI` = 150 dpi) and show the PNG with
  ``style="max-width: 100%; width: 900px"``.
* **Alt text.** Every figure function stores a sentence saying what the figure shows in ``fig._kstar_alt``; read it
  with :func:`alt_text` for the HTML ``alt`` attribute. Figures with a caption worth printing (Figure 1's note on
  SPEC's infinite-skew rule) also store ``fig._kstar_caption``, read with :func:`caption`.
* Colours of the three regions follow the paper: blue for fractured (> t), red for overlapped, green for clustered
  (< -t); the regions are also named in the legend, so colour is never the only cue. Points use the colour-blind-safe
  Okabe-Ito palette with one marker per group (e.g. per threat model).
* Error bars: Gamma' from columns ``{y}_lo`` / ``{y}_hi`` (bootstrap interval of ``compute_kstar``), accuracies from
  ``{x}_lo`` / ``{x}_hi`` (Wilson; :func:`kstar_utils.evidence.add_accuracy_intervals` adds them from a sample size).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

from . import evidence, metrics
from .errors import KStarInputError
from .kstar import KStarResult

_num = evidence.format_number  # every number a figure prints: never "-0.00"

REGION_FILL = {"Fractured": "#4c72b0", "Overlapped": "#dd5555", "Clustered": "#55a868"}
PATTERN_COLOUR = {"Fractured": "#2f5d9e", "Overlapped": "#c0392b", "Clustered": "#2e8540"}
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")
# Groups that appear in several figures keep one style everywhere (L2 was orange squares on the index and blue
# circles on its own panel): a group named here takes its style, any other the next free palette entry.
GROUP_STYLES = {"Linf": (OKABE_ITO[0], MARKERS[0]), "L2": (OKABE_ITO[1], MARKERS[1]),
                "corruptions": (OKABE_ITO[3], MARKERS[3])}
LINESTYLES = ("-", "--", ":", "-.")
FIGURE_WIDTH_IN = 9.0
DISPLAY_WIDTH_PX = 900
MIN_FONT_PT = 9.0
SAVE_DPI = 150
CHANCE_MARGIN = 0.1  # an accuracy within this of chance (1 / classes) is marked near chance everywhere
FONT = 10.0  # base size of every text drawn here: 10 pt on a 9 in figure shows as ~10.4 pt at 900 px
SMALL = 9.5
# Gamma' heatmap colours, by the regions' own hues: green (clustered, below -t) darkening away from the band, a pale
# red band (overlapped, -t to t: the scatters' red region) and blue (fractured, above t) darkening away from it. The two
# ends differ in lightness too, so they stay apart for colour-blind readers, and the band's edges are sharp steps.
HEATMAP_CLUSTERED = ("#1b7837", "#a6dba0")
HEATMAP_OVERLAPPED = "#f4cccc"
HEATMAP_FRACTURED = ("#92c5de", "#2166ac")


# ---------------------------------------------------------------------------------------------- figure conventions
def _finish(fig: Figure, alt: str, caption_text: str | None = None) -> Figure:
    """Attach alt text (appended when several panels share a figure) and an optional caption."""
    previous = getattr(fig, "_kstar_alt", None)
    fig._kstar_alt = f"{previous} {alt}" if previous else alt
    if caption_text is not None:
        fig._kstar_caption = caption_text
    return fig


def alt_text(fig: Figure, default: str | None = None) -> str:
    """What the figure shows, in words, for the HTML ``alt`` attribute: the text a figure function of this module
    attached, else ``default``, else the titles of the figure's axes."""
    text = getattr(fig, "_kstar_alt", None)
    if text:
        return text
    if default:
        return default
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    return "Figure: " + "; ".join(titles) if titles else "Figure"


def caption(fig: Figure) -> str | None:
    """The caption a figure function attached (Figure 1 explains SPEC's infinite-skew rule there), or None."""
    return getattr(fig, "_kstar_caption", None)


def figure_png(fig: Figure, dpi: int = SAVE_DPI) -> bytes:
    """PNG bytes of a figure at ``dpi`` (150 by default: sharp when shown 900 px wide on a high-density screen)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _visible_texts(fig: Figure) -> list:
    """Every text the figure actually draws: tick labels outside their axis's view limits (kept by matplotlib but
    not drawn) and texts of hidden axes are left out."""
    fig.canvas.draw()
    hidden = set()
    for ax in fig.findobj(lambda a: isinstance(a, plt.Axes)):
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(1.0, abs(hi - lo))
            drawn = ax.axison and axis.get_visible() and ax.get_visible()
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not drawn or not (lo - eps <= tick.get_loc() <= hi + eps):
                    hidden.update({id(tick.label1), id(tick.label2)})
    out = []
    for t in fig.findobj(lambda a: isinstance(a, plt.Text)):
        if id(t) in hidden or not (t.get_visible() and t.get_text().strip()):
            continue
        parent = getattr(t, "axes", None)
        if parent is not None and not parent.get_visible():
            continue
        out.append(t)
    return out


def displayed_font_sizes(fig: Figure, display_px: int = DISPLAY_WIDTH_PX) -> list[tuple[str, float]]:
    """Each visible text with its size in points as shown when the figure is displayed ``display_px`` wide
    (CSS: 96 px per inch)."""
    scale = display_px / (fig.get_figwidth() * 96.0)
    return [(t.get_text(), float(t.get_fontsize()) * scale) for t in _visible_texts(fig)]


def small_texts(fig: Figure, display_px: int = DISPLAY_WIDTH_PX, min_pt: float = MIN_FONT_PT) -> list[str]:
    """Texts smaller than ``min_pt`` as shown at ``display_px`` wide (empty when the figure is readable)."""
    return [f"{text!r}: {size:.1f} pt" for text, size in displayed_font_sizes(fig, display_px) if size < min_pt - 1e-6]


def clipped_texts(fig: Figure, tolerance_px: float = 1.0) -> list[str]:
    """Texts that reach beyond the figure's edges (cut off when saved): empty when every text is whole."""
    texts = _visible_texts(fig)
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    out = []
    for t in texts:
        bb = plt.Text.get_window_extent(t, renderer)  # the text itself, not an annotation's leader line
        if (bb.x0 < box.x0 - tolerance_px or bb.y0 < box.y0 - tolerance_px or bb.x1 > box.x1 + tolerance_px
                or bb.y1 > box.y1 + tolerance_px):
            out.append(t.get_text())
    return out


def readability_problems(fig: Figure, display_px: int = DISPLAY_WIDTH_PX, min_pt: float = MIN_FONT_PT) -> list[str]:
    """Everything that makes a figure hard to read at its display size, in one list (empty when it is fine): texts
    below ``min_pt`` as shown ``display_px`` wide, texts hiding one another, texts cut off at the figure's edge."""
    return ([f"too small: {s}" for s in small_texts(fig, display_px, min_pt)]
            + [f"overlapping: {a!r} and {b!r}" for a, b in overlapping_texts(fig)]
            + [f"cut off: {t!r}" for t in clipped_texts(fig)])


def overlapping_texts(fig: Figure, tolerance_px: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes overlap by more than ``tolerance_px``: empty when no label hides another."""
    texts = _visible_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = []
    for t in texts:
        bb = plt.Text.get_window_extent(t, renderer)  # the text itself, not an annotation's leader line
        if bb.width > 0 and bb.height > 0:
            boxes.append((t, bb.expanded(1, 1).padded(-tolerance_px)))
    pairs = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (a, ba), (b, bb) = boxes[i], boxes[j]
            if ba.overlaps(bb):
                pairs.append((a.get_text(), b.get_text()))
    return pairs


def _new_figure(height: float, width: float = FIGURE_WIDTH_IN, **kwargs: Any) -> Figure:
    return plt.figure(figsize=(width, height), layout="constrained", **kwargs)


def _style_axes(ax: plt.Axes, size: float = FONT) -> None:
    ax.tick_params(labelsize=size)
    ax.xaxis.label.set_fontsize(size)
    ax.yaxis.label.set_fontsize(size)
    ax.title.set_fontsize(size)


def _skew_text(skew: float) -> str:
    if math.isnan(skew):
        return "skew n/a"
    if math.isinf(skew):
        return "skew -inf" if skew < 0 else "skew +inf"
    return f"skew {_num(skew)}"


def _interval_text(result: KStarResult, key: str) -> str:
    intervals = getattr(result, "intervals", None) or {}
    lo_hi = intervals.get(key)
    if not lo_hi or any(v is None or not np.isfinite(v) for v in lo_hi):
        return ""
    return f" [{_num(lo_hi[0])}, {_num(lo_hi[1])}]"


# ---------------------------------------------------------------------------------------------------- Figure 1
def gamma_prime_rule(per_class: pd.DataFrame) -> dict:
    """Gamma' with and without SPEC's rule for NaN/inf class skews, and the sentence that explains the difference.

    Returns ``with_rule`` (SPEC's Gamma'), ``plain_mean`` (the plain mean of the class skews: -inf/+inf/NaN when a
    class is infinite or undefined), ``finite_mean`` (mean over finite skews only), ``changed`` and ``text``.
    """
    skews = per_class["skew"].to_numpy(dtype=np.float64)
    labels = [str(v) for v in per_class["label"]]
    with_rule = metrics.gamma_approx(skews)
    finite = skews[np.isfinite(skews)]
    with np.errstate(invalid="ignore"):
        plain = float(np.mean(skews)) if skews.size else math.nan
    finite_mean = float(finite.mean()) if finite.size else math.nan
    odd = [(lab, s) for lab, s in zip(labels, skews) if not np.isfinite(s)]
    if not odd:
        text = (f"Every class has a finite skew, so kstar's rule for infinite or undefined class skews (NaN counts as "
                f"0, +-inf as the largest / smallest finite class skew) does not change Gamma' = {_num(with_rule)}.")
        return {"with_rule": with_rule, "plain_mean": plain, "finite_mean": finite_mean, "changed": False,
                "text": text}
    names = ", ".join(f"'{lab}' ({_skew_text(s)})" for lab, s in odd)
    plain_txt = "undefined (NaN)" if math.isnan(plain) else ("-inf" if plain < 0 else "+inf")
    meaning = []
    if np.any(skews == -np.inf):
        meaning.append("skew -inf means every k* of the class equals n_c (a perfectly separated class)")
    if np.any(np.isnan(skews)):
        meaning.append("an undefined (NaN) skew means all k* of the class are equal but below n_c")
    if np.any(skews == np.inf):
        meaning.append("+inf is an infinite positive skew")
    text = (f"Class {names}: {'; '.join(meaning)}. A plain mean over classes would be {plain_txt}, so kstar's rule "
            f"counts -inf as the smallest and +inf as the largest finite class skew and NaN as 0: Gamma' = "
            f"{_num(with_rule)} with the rule, {plain_txt} without it ({_num(finite_mean)} over the finite classes "
            f"only). The rule exists because a mean "
            f"over classes must stay finite for latent spaces to be compared; it also means one perfectly separated "
            f"class counts no better than the best-clustered finite one.")
    return {"with_rule": with_rule, "plain_mean": plain, "finite_mean": finite_mean, "changed": True, "text": text}


def framework_schematic(ax: plt.Axes | None = None) -> Figure:
    """The framework as boxes and arrows: features -> k* of each sample -> k* distribution per concept -> Gamma and
    Gamma'."""
    if ax is None:
        fig = _new_figure(2.6)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    boxes = [
        (0.01, 0.25, 0.2, 0.5, "Features\nof a vision model:\none row per sample"),
        (0.27, 0.25, 0.21, 0.5, "k* of each sample:\nrank of its nearest\nneighbour from\nanother class"),
        (0.54, 0.25, 0.2, 0.5, "k* distribution\nper concept (class):\nskew -> fractured,\noverlapped, clustered"),
        (0.8, 0.55, 0.19, 0.4, "Gamma: skew of\nall samples' k*\n(pooled)"),
        (0.8, 0.03, 0.19, 0.4, "Gamma': mean of\nthe concepts' skews"),
    ]
    colours = ["#eeeeee", "#fde9c9", "#dbe8f6", "#e4f1e0", "#e4f1e0"]
    for (x, y, w, h, text), colour in zip(boxes, colours):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01,rounding_size=0.02", fc=colour,
                                    ec="0.3", lw=1.0, transform=ax.transAxes))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=FONT, transform=ax.transAxes)
    arrows = [((0.21, 0.5), (0.27, 0.5)), ((0.48, 0.5), (0.54, 0.5)), ((0.74, 0.55), (0.8, 0.72)),
              ((0.74, 0.45), (0.8, 0.25))]
    for start, end in arrows:
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, lw=1.4, color="0.25",
                                     transform=ax.transAxes))
    ax.set_title("(a) The k* framework", loc="left", fontsize=FONT + 1)
    return _finish(fig, "Schematic of the k* framework: a model's features give the k* of each sample (the rank of "
                        "its nearest neighbour from another class), these form a k* distribution per concept whose "
                        "skew names it fractured, overlapped or clustered, and the latent space is summarised by "
                        "Gamma (skew of all samples pooled) and Gamma' (mean of the concepts' skews).")


def _density_curve(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian KDE on [0, 1] with reflection at both ends (so mass at k*/n_c = 1 is not halved); None if constant."""
    from scipy.stats import gaussian_kde

    if values.size < 2 or np.all(values == values[0]):
        return None
    kde = gaussian_kde(values)
    return kde(grid) + kde(-grid) + kde(2 - grid)


def _pattern_styles(per_class: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Colour by pattern, line style cycling within a pattern, so several classes of one pattern stay apart."""
    seen: dict[str, int] = {}
    out = {}
    for lab, pattern in zip(per_class["label"].astype(str), per_class["pattern"]):
        i = seen.get(pattern, 0)
        seen[pattern] = i + 1
        out[lab] = (PATTERN_COLOUR[pattern], LINESTYLES[i % len(LINESTYLES)])
    return out


def kstar_density(result: KStarResult, ax: plt.Axes | None = None, max_classes: int = 12,
                  legend_inside: bool = False) -> Figure:
    """Density of normalised k* per class, one curve per class coloured by its pattern; a class whose k* are all
    equal (skew -inf or NaN) is drawn as a vertical line at its value, so every class has a mark."""
    if ax is None:
        fig = _new_figure(4.0, width=6.0)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    table = result.per_class.head(max_classes)
    styles = _pattern_styles(table)
    labels = result.labels.astype(str)
    grid = np.linspace(0, 1, 201)
    for lab, skew, pattern in zip(table["label"].astype(str), table["skew"], table["pattern"]):
        colour, ls = styles[lab]
        v = result.kstar_norm[labels == lab]
        curve = _density_curve(v, grid)
        name = f"{lab}: {_skew_text(skew)}, {pattern}"
        if curve is None:
            ax.axvline(v[0], color=colour, ls=ls, lw=3, label=f"{name}\n(every k*/n_c = {v[0]:.2g})")
        else:
            ax.plot(grid, curve, color=colour, ls=ls, lw=2, label=name)
            ax.fill_between(grid, curve, color=colour, alpha=0.12, lw=0)
    ax.set_xlim(0, 1.02)  # a class with every k*/n_c = 1 is a line at 1: keep it off the frame
    ax.set_ylim(bottom=0)
    ax.set_xlabel("normalised k* (k* / n_c)")
    ax.set_ylabel("density")
    if legend_inside:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.45)  # head room for the legend above the curves
        ax.legend(fontsize=SMALL, frameon=False, loc="upper right")
    else:
        ax.legend(fontsize=SMALL, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1)
    _style_axes(ax)
    return _finish(fig, f"Density of normalised k* for {len(table)} classes, coloured by pattern: "
                        + "; ".join(f"{lab} {_skew_text(s)} ({p})" for lab, s, p in
                                    zip(table["label"], table["skew"], table["pattern"])) + ".")


def framework_figure(x2d: np.ndarray, labels: Sequence, result: KStarResult,
                     intended: dict[str, str] | None = None) -> Figure:
    """Figure 1: (a) the framework as a schematic; (b) a computed 2-D example - the concepts, the k* of every sample,
    the k* density per concept coloured by pattern, with Gamma and Gamma'.

    Where SPEC's rule for infinite class skews changes Gamma', the figure shows Gamma' with and without it and the
    caption (:func:`caption`) says why the rule exists. ``intended`` maps class -> the pattern it was built to show
    (e.g. :data:`kstar_utils.synthetic.FRAMEWORK_INTENDED`); classes that miss it are flagged in the caption.
    """
    xy = np.asarray(x2d, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise KStarInputError(f"framework_figure draws 2-D points; got an array of shape {xy.shape}. Project first.")
    y = np.asarray(labels).astype(str)
    fig = _new_figure(8.2)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 2.1])
    framework_schematic(top.add_subplot())
    axes = bottom.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.2, 1.25]})
    table = result.per_class
    styles = _pattern_styles(table)
    for lab in table["label"].astype(str):
        colour, ls = styles[lab]
        sel = y == lab
        marker = {"-": "o", "--": "s", ":": "^", "-.": "D"}[ls]
        axes[0].scatter(xy[sel, 0], xy[sel, 1], s=9, color=colour, marker=marker, label=lab, alpha=0.8, lw=0)
    axes[0].set_title("1. the concepts", loc="left")
    axes[0].legend(fontsize=SMALL, markerscale=2, frameon=False, loc="upper left")
    sc = axes[1].scatter(xy[:, 0], xy[:, 1], c=result.kstar_norm, s=9, cmap="viridis", vmin=0, vmax=1, lw=0)
    cb = bottom.colorbar(sc, ax=axes[1], location="right", shrink=0.8, pad=0.02)
    cb.set_label("k* / n_c of each sample", fontsize=FONT)
    cb.ax.tick_params(labelsize=FONT)
    axes[1].set_title("2. k* of every sample", loc="left")
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    kstar_density(result, ax=axes[2])
    axes[2].set_title("3. k* distribution per concept", loc="left")
    for ax in axes:
        _style_axes(ax)
    rule = gamma_prime_rule(table)
    headline = (f"(b) Computed example: Gamma = {_fmt_gamma(result.gamma_true)}{_interval_text(result, 'gamma')}, "
                f"Gamma' = {_num(result.gamma_approx)}{_interval_text(result, 'gamma_prime')}")
    if rule["changed"]:
        plain = "NaN" if math.isnan(rule["plain_mean"]) else ("-inf" if rule["plain_mean"] < 0 else "+inf")
        headline += (f" with kstar's +-inf rule; without it Gamma' = {plain}\n(the rule keeps a mean over classes "
                     f"finite; over finite classes only: {_num(rule['finite_mean'])})")
    bottom.suptitle(headline, x=0.01, ha="left", fontsize=FONT + 1)
    misses = []
    if intended:
        actual = dict(zip(table["label"].astype(str), table["pattern"]))
        misses = [f"'{k}' was built to be {v} but is {actual.get(str(k), 'absent')}" for k, v in intended.items()
                  if actual.get(str(k)) != v]
    cap = ("Figure 1. (a) The framework. (b) A synthetic 2-D latent space: "
           + "; ".join(f"'{lab}' {_skew_text(s)} ({p})" for lab, s, p in
                       zip(table["label"], table["skew"], table["pattern"]))
           + f". Gamma = {_fmt_gamma(result.gamma_true)}, Gamma' = {_num(result.gamma_approx)}. " + rule["text"]
           + (" Not as intended: " + "; ".join(misses) + "." if misses else ""))
    alt = ("Figure 1. Top: schematic of the k* framework (features, k* per sample, k* distribution per concept, Gamma "
           "and Gamma'). Bottom: a synthetic 2-D latent space with its concepts, each sample coloured by its "
           "normalised k*, and the k* density per concept: "
           + "; ".join(f"{lab} {_skew_text(s)} ({p})" for lab, s, p in
                       zip(table["label"], table["skew"], table["pattern"]))
           + f"; Gamma' = {_num(result.gamma_approx)}.")
    return _finish(fig, alt, cap)


def _fmt_gamma(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "-inf" if v < 0 else "+inf"
    return _num(v)


# ---------------------------------------------------------------------------------------------------- Figure 2
def kstar_distributions(result: KStarResult, ax: plt.Axes | None = None, title: str | None = None,
                        max_classes: int | None = None, compact: bool = False) -> Figure:
    """Per-class k* distributions (Figure 2): horizontal violins with a boxen plot inside, x from 0 to 1, a star at
    the class mean, and the skew with the pattern beside each class. ``compact`` (a panel of a pair) writes the skew
    and the pattern's initial ("-0.81 C") and only Gamma' in the title, so that two panels fit one figure's width."""
    import seaborn as sns

    table = result.per_class.copy()
    if max_classes is not None:
        table = table.head(max_classes)
    labels = [str(v) for v in table["label"]]
    frame = pd.DataFrame({"class": result.labels.astype(str), "kstar_norm": result.kstar_norm})
    frame = frame[frame["class"].isin(labels)]
    if ax is None:
        fig = _new_figure(0.5 * len(labels) + 1.6, width=7.5)
        ax = fig.add_subplot()
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
        text = f"{_skew_text(skew).removeprefix('skew ')} {str(pattern)[0]}" if compact else \
            f"{_skew_text(skew)}, {pattern}"
        ax.text(1.02, i, text, va="center", fontsize=SMALL, transform=ax.get_yaxis_transform())
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalised k* (k* / n_c)")
    ax.set_ylabel("class")
    if compact:
        gammas = f"Gamma' = {_num(result.gamma_approx)}{_interval_text(result, 'gamma_prime')}"
    else:
        gammas = (f"Gamma = {_fmt_gamma(result.gamma_true)}{_interval_text(result, 'gamma')}, "
                  f"Gamma' = {_num(result.gamma_approx)}{_interval_text(result, 'gamma_prime')}")
        if _interval_text(result, "gamma_prime"):
            gammas += " (95% bootstrap intervals)"
    ax.set_title(f"{title}\n{gammas}" if title else f"k* distributions: {gammas}", fontsize=FONT)
    _style_axes(ax)
    counts = metrics.pattern_counts(table)
    return _finish(fig, f"k* distributions of {len(labels)} classes{' (' + title + ')' if title else ''} as "
                        f"violins on normalised k* from 0 to 1: {counts['Fractured']} fractured, "
                        f"{counts['Overlapped']} overlapped, {counts['Clustered']} clustered; Gamma' = "
                        f"{_num(result.gamma_approx)}.")


def compare_distributions(first: KStarResult, second: KStarResult, titles: Sequence[str] = ("first", "second"),
                          max_classes: int | None = None) -> Figure:
    """Figure 2 as the paper sets it: two models' per-class k* distributions side by side, the classes in one order
    on one shared axis, so that each concept reads across the pair (two figures one above the other made that a
    scroll). Both results must describe the same classes, as two models on one evaluated set do."""
    classes = [[str(v) for v in r.per_class["label"]] for r in (first, second)]
    if classes[0] != classes[1]:
        raise KStarInputError(f"compare_distributions needs two results on the same classes in the same order; got "
                              f"{classes[0][:5]} and {classes[1][:5]} (compute both on one evaluated set).")
    shown = len(classes[0]) if max_classes is None else min(max_classes, len(classes[0]))
    fig = _new_figure(0.5 * shown + 2.0)
    axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"wspace": 0.3})
    for ax, result, title in zip(axes, (first, second), titles):
        kstar_distributions(result, ax=ax, title=textwrap.fill(str(title), 40), max_classes=max_classes,
                            compact=True)
    axes[1].set_ylabel("")
    axes[1].tick_params(labelleft=False)
    intervals = all(_interval_text(r, "gamma_prime") for r in (first, second))
    return _finish(fig, "The two panels share the class axis.",
                   "Beside each class: its skew and pattern (F fractured, O overlapped, C clustered); the star is the "
                   "class mean, the boxes the quantiles of its k* (a boxen plot)"
                   + ("; in the titles, brackets: 95% bootstrap intervals of Gamma'." if intervals else "."))


def embedding_scatter(features: np.ndarray, labels: Sequence, method: str = "tsne", seed: int = 0,
                      ax: plt.Axes | None = None, title: str | None = None, max_points: int = 3000,
                      legend: bool = True) -> Figure:
    """t-SNE or UMAP of features, coloured by class (the comparison of Figure 2); the caption names the method's
    settings, so that a reader can make the same picture."""
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels).astype(str)
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x, y = x[keep], y[keep]
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=perplexity).fit_transform(x)
        settings = f"t-SNE (scikit-learn, perplexity {perplexity:g}, PCA initialisation, seed {seed})"
    elif method == "umap":
        import umap

        from .tile_kernels import torch_threads_kept  # umap is numba code: keep the caller's torch thread count

        with torch_threads_kept():
            xy = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1),
                           n_jobs=1).fit_transform(x)
        settings = f"UMAP (umap-learn, {min(15, len(x) - 1)} neighbours, euclidean, seed {seed})"
    else:
        raise KStarInputError(f"unknown method {method!r}; use 'tsne' or 'umap'.")
    if ax is None:
        fig = _new_figure(4.8, width=5.5)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    classes = sorted(set(y))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        sel = y == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=cmap(i % cmap.N), label=c, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or method.upper(), fontsize=FONT)
    if legend and len(classes) <= 12:
        ax.legend(markerscale=3, fontsize=SMALL, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    name = "t-SNE" if method == "tsne" else "UMAP"
    sampled = f" (a seeded sample of {max_points} of {len(features)})" if len(features) > max_points else ""
    return _finish(fig, f"{name} projection of {len(x)} feature vectors{' (' + title + ')' if title else ''}, "
                        f"coloured by class ({len(classes)} classes).",
                   f"{settings} of {len(x)} feature vectors{sampled}. Colours mark classes, not the fractured, "
                   "overlapped and clustered colours of the k* figures; distances and cluster sizes in such a "
                   "projection are not those of the latent space.")


def compare_embeddings(first: tuple[np.ndarray, Sequence], second: tuple[np.ndarray, Sequence],
                       method: str = "tsne", titles: Sequence[str] = ("first", "second"), seed: int = 0) -> Figure:
    """Two models' t-SNE or UMAP side by side (Figure 2's embeddings), each ``(features, labels)``, one legend for
    both: stacked one above the other, the pair could not be compared by eye."""
    fig = _new_figure(4.6)
    axes = fig.subplots(1, 2)
    for ax, (features, labels), title in zip(axes, (first, second), titles):
        embedding_scatter(features, labels, method=method, seed=seed, ax=ax, title=textwrap.fill(str(title), 40),
                          legend=False)
    handles, names = axes[0].get_legend_handles_labels()
    if len(names) <= 12:
        fig.legend(handles, names, loc="outside right upper", markerscale=3, fontsize=SMALL, frameon=False)
    return fig


# ------------------------------------------------------------------------------------------------- Figures 3 and 4
def _regions(ax: plt.Axes, threshold: float, lo: float, hi: float) -> None:
    lo = lo if np.isfinite(lo) else -1.0  # an infinite Gamma' (or interval end) is not drawn, so it sets no limit
    hi = hi if np.isfinite(hi) else 1.0
    top = max(hi, threshold) + 0.3
    bottom = min(lo, -threshold) - 0.3
    ax.axhspan(threshold, top + 10, color=REGION_FILL["Fractured"], alpha=0.12, lw=0)
    ax.axhspan(-threshold, threshold, color=REGION_FILL["Overlapped"], alpha=0.12, lw=0)
    ax.axhspan(bottom - 10, -threshold, color=REGION_FILL["Clustered"], alpha=0.12, lw=0)
    ax.set_ylim(bottom, top)


def _bands_text(threshold: float) -> str:
    """The caption's words for the three bands drawn by :func:`_regions`."""
    return (f"Bands: mostly fractured (Gamma' > {threshold:g}, blue), overlapped (red), clustered "
            f"(Gamma' < -{threshold:g}, green)")


def _region_handles() -> tuple[list, list[str]]:
    handles = [Patch(color=REGION_FILL[p], alpha=0.3) for p in metrics.PATTERNS]
    return handles, [f"mostly {p.lower()}" for p in metrics.PATTERNS]


def _interval_columns(frame: pd.DataFrame, column: str, spec: Any) -> tuple[str, str] | None:
    """Resolve an error-bar spec: "auto" -> ({c}_lo, {c}_hi) when present; a (lo, hi) tuple; None -> none."""
    if spec is None or spec is False:
        return None
    if spec == "auto":
        pair = (f"{column}_lo", f"{column}_hi")
        return pair if all(c in frame for c in pair) else None
    lo, hi = spec
    for c in (lo, hi):
        if c not in frame:
            raise KStarInputError(f"error-bar column {c!r} is not in the table; columns: {list(frame.columns)}.")
    return lo, hi


def _errors(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """matplotlib's asymmetric error array from interval bounds (0 where a bound is missing)."""
    ok = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        low = np.where(ok & np.isfinite(lo), values - lo, 0.0)
        high = np.where(ok & np.isfinite(hi), hi - values, 0.0)
    return np.vstack([np.clip(low, 0, None), np.clip(high, 0, None)])


def _spread_positions(desired: np.ndarray, gap: float, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Positions as close as possible to ``desired`` (sorted ascending) but at least ``gap`` apart within [lo, hi]:
    the label column of a scatter plot, so that no label hides another."""
    pos = np.clip(np.asarray(desired, dtype=np.float64), lo, hi)
    for i in range(1, len(pos)):
        pos[i] = max(pos[i], pos[i - 1] + gap)
    if len(pos) and pos[-1] > hi:
        pos[-1] = hi
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - gap)
    return pos


def _pick_labels(points: pd.DataFrame, x: str, y: str, max_labels: int) -> pd.DataFrame:
    """All points when they fit, else the most extreme ones: alternately the lowest / highest in y and in x."""
    if len(points) <= max_labels:
        return points
    order = []
    for col in (y, x):
        ranked = points.sort_values(col)
        order += list(ranked.index[: max_labels // 4 + 1]) + list(ranked.index[::-1][: max_labels // 4 + 1])
    keep = list(dict.fromkeys(order))[:max_labels]
    return points.loc[keep]


def _label_column(ax: plt.Axes, pts: pd.DataFrame, x: str, y: str, label: str, fontsize: float) -> None:
    """Labels in a column right of the axes, joined to their points by thin leader lines, spaced by the measured
    height of the axes so that no label hides another. Call after everything else that shapes the layout."""
    if pts.empty:
        return
    fig = ax.figure
    fig.draw_without_rendering()  # resolve the constrained layout: the axes' real height sets the spacing
    axes_height_pt = ax.get_window_extent().height * 72.0 / fig.dpi
    ylo, yhi = ax.get_ylim()
    frac = (pts[y].to_numpy(dtype=float) - ylo) / (yhi - ylo)
    order = np.argsort(frac, kind="stable")
    gap = 1.3 * fontsize / max(axes_height_pt, 1.0)
    pos = _spread_positions(frac[order], gap, lo=-0.02, hi=1.02)
    for (_, row), ty in zip(pts.iloc[order].iterrows(), pos):
        ax.annotate(str(row[label]), xy=(row[x], row[y]), xycoords="data", xytext=(1.03, ty),
                    textcoords="axes fraction", va="center", ha="left", fontsize=fontsize, annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6", "shrinkA": 0, "shrinkB": 3})


def seed_grouping(frame: pd.DataFrame) -> dict:
    """The ``config`` and ``units`` arguments of :func:`gamma_regions` for a results table: with several seeds, each
    configuration is one point (its seeds' mean and range), as the verdicts count them; otherwise each model is."""
    grouped = "seed" in frame and frame["seed"].nunique() > 1
    return {"config": "config" if grouped else None, "units": "model-seed pairs" if grouped else "models"}


def gamma_regions(frame: pd.DataFrame, x: str, y: str = "gamma_prime", hue: str | None = None,
                  label: str | None = "model", threshold: float = metrics.DEFAULT_THRESHOLD,
                  xlabel: str | None = None, title: str | None = None, ax: plt.Axes | None = None,
                  yerr: Any = "auto", xerr: Any = "auto", n: str | int | None = None, config: str | None = None,
                  units: str | None = None, stats: bool = True, max_labels: int = 16, n_boot: int = 2000,
                  seed: int = 0, crowded_groups: int = 3, legend: bool = True, short_title: bool = False,
                  chance: float | None = None, chance_margin: float = CHANCE_MARGIN) -> Figure:
    """Gamma' of each model against an accuracy (Figures 3 and 4), on the blue/red/green regions.

    * Error bars: y from ``{y}_lo``/``{y}_hi`` (bootstrap interval of Gamma'), x from ``{x}_lo``/``{x}_hi`` or, with
      ``n`` (column or number of evaluated samples), Wilson intervals computed here. Pass ``yerr``/``xerr`` as a
      (lo, hi) pair of column names, or None to draw none.
    * ``config``: a column naming the configuration each row (seed) belongs to. Then each configuration is drawn as
      its mean with bars spanning the range over its seeds, its seeds as faint points with their own intervals, and
      the correlation resamples whole configurations (cluster bootstrap).
    * ``hue``: one colour and marker per group (e.g. threat model); the correlation is computed *per group*, never
      pooled across groups whose x axes differ (Linf and L2 robust accuracies are different quantities).
    * The title carries Spearman's rho with its bootstrap 95% interval, the permutation p, n and the units; with
      ``crowded_groups`` groups or more these lines move to the caption (:func:`caption`), which would otherwise
      squeeze the plot, and at most half of ``max_labels`` points are named.
    * ``label``: names in a column beside the plot with leader lines (at most ``max_labels``, the most extreme).
    * ``legend=False`` and ``short_title=True`` make a panel of :func:`gamma_regions_by`: no figure legend, and the
      title gives rho, its interval and p only (the full statistics go to the caption).
    * ``chance``: rows whose ``x`` accuracy lies within ``chance_margin`` of it are ringed, as in the heatmap and the
      line plot (their Gamma' describes a model that has not learned the task).
    """
    if x not in frame or y not in frame:
        raise KStarInputError(f"gamma_regions needs columns {x!r} and {y!r}; the table has {list(frame.columns)}.")
    data = frame.copy()
    infinite = int(np.isinf(pd.to_numeric(data[y], errors="coerce")).sum())
    data[y] = pd.to_numeric(data[y], errors="coerce").replace([np.inf, -np.inf], np.nan)  # cannot be placed
    if n is not None and xerr == "auto" and f"{x}_lo" not in data:
        data = evidence.add_accuracy_intervals(data, x, n)
    ycols = _interval_columns(data, y, yerr)
    xcols = _interval_columns(data, x, xerr)
    if ax is None:
        fig = _new_figure(6.2)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    finite_y = data[y].replace([np.inf, -np.inf], np.nan)
    bounds = [finite_y]
    if ycols:
        bounds += [data[ycols[0]].replace([np.inf, -np.inf], np.nan), data[ycols[1]].replace([np.inf, -np.inf], np.nan)]
    lo_all = float(np.nanmin([b.min() for b in bounds])) if finite_y.notna().any() else -1.0
    hi_all = float(np.nanmax([b.max() for b in bounds])) if finite_y.notna().any() else 1.0
    _regions(ax, threshold, lo_all, hi_all)
    groups = list(data.groupby(hue, sort=False)) if hue else [(None, data)]
    crowded = len(groups) >= crowded_groups
    if crowded:
        max_labels = max_labels // 2
    stat_lines = []
    points_for_labels = []
    any_seeds_shown = False
    for i, (name, part) in enumerate(groups):
        colour, marker = GROUP_STYLES.get(str(name), (OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)]))
        seeds_shown = config is not None and part.groupby(config).size().max() > 1
        any_seeds_shown |= seeds_shown
        if seeds_shown:
            xe = _errors(part[x].to_numpy(float), *(part[c].to_numpy(float) for c in xcols)) if xcols else None
            ye = _errors(part[y].to_numpy(float), *(part[c].to_numpy(float) for c in ycols)) if ycols else None
            ax.errorbar(part[x], part[y], xerr=xe, yerr=ye, fmt=marker, ms=4, color=colour, alpha=0.3, lw=0.6,
                        zorder=2, label=(f"{name}: " if hue else "") + "single seeds")
            agg = part.groupby(config, sort=False).agg(xm=(x, "mean"), xmin=(x, "min"), xmax=(x, "max"),
                                                       ym=(y, "mean"), ymin=(y, "min"), ymax=(y, "max"),
                                                       seeds=(y, "size"))
            by_config = part.groupby(config, sort=False)
            if label and label in part and by_config[label].nunique().max() == 1:
                agg["name"] = by_config[label].first().astype(str)
            else:  # per-seed names (e.g. "model-s1") would misname the configuration's mean
                agg["name"] = agg.index.astype(str)
            ax.errorbar(agg["xm"], agg["ym"], xerr=[agg["xm"] - agg["xmin"], agg["xmax"] - agg["xm"]],
                        yerr=[agg["ym"] - agg["ymin"], agg["ymax"] - agg["ym"]], fmt=marker, ms=8, color=colour,
                        mec="black", mew=0.7, lw=1.4, capsize=2, zorder=4,
                        label=f"{name}: mean and range over seeds" if hue else "mean and range over seeds")
            if label is not None:  # None: no names at all (a crowded overview)
                points_for_labels.append(agg.rename(columns={"xm": x, "ym": y, "name": "_label"})[[x, y, "_label"]]
                                         .assign(_group=str(name)))
        else:
            xe = _errors(part[x].to_numpy(float), *(part[c].to_numpy(float) for c in xcols)) if xcols else None
            ye = _errors(part[y].to_numpy(float), *(part[c].to_numpy(float) for c in ycols)) if ycols else None
            ax.errorbar(part[x], part[y], xerr=xe, yerr=ye, fmt=marker, ms=7, color=colour, mec="black", mew=0.7,
                        lw=1.0, capsize=2, zorder=4, label=str(name) if hue else None)
            if label and label in part:
                points_for_labels.append(part[[x, y]].assign(_label=part[label].astype(str), _group=str(name)))
        if stats:
            unit_name = units or ("model-seed pairs" if seeds_shown else "models")
            ev = evidence.correlation_evidence(part[x], part[y], units=unit_name, n_boot=n_boot, seed=seed,
                                               groups=part[config] if seeds_shown else None,
                                               group_units="configurations")
            prefix = f"{name}: " if hue else ""
            if ev.n >= 3 and np.isfinite(ev.rho):
                stat_lines.append(prefix + evidence.evidence_numbers(ev, short=True))
                brief = evidence.evidence_brief(ev)
            else:
                stat_lines.append(prefix + f"n = {ev.n} {unit_name}: too few for a correlation")
                brief = f"n = {ev.n}: too few for a correlation"
    ax.set_xlabel(xlabel or x, fontsize=FONT)
    ax.set_ylabel("Gamma' (approximate skewness coefficient)", fontsize=FONT)
    near = near_chance(data[x].to_numpy(float), chance, chance_margin) if chance is not None \
        else np.zeros(len(data), bool)
    if near.any():
        ax.scatter(data.loc[near, x], data.loc[near, y], marker="o", s=220, facecolor="none", edgecolor="black",
                   lw=1.3, zorder=7, label=f"accuracy within {chance_margin:g} of chance")
    if infinite:
        stat_lines.append(f"{infinite} row(s) with an infinite Gamma' not drawn")
    chosen = pd.DataFrame(columns=[x, y, "_label"])
    if points_for_labels:
        pts = pd.concat(points_for_labels, ignore_index=True).dropna(subset=[x, y])
        if hue and pts["_label"].duplicated().any():  # one name in two groups ("standard" under Linf and L2)
            pts["_label"] = pts["_group"] + ": " + pts["_label"]
        chosen = _pick_labels(pts, x, y, max_labels)
        if len(chosen) < len(pts):
            stat_lines.append(f"{len(chosen)} of {len(pts)} points labelled (the most extreme)")
    wrapped = [textwrap.fill(line, 100, subsequent_indent="    ") for line in stat_lines]
    if crowded and stat_lines:
        wrapped = [f"{len(groups)} {hue} groups: the statistics of each are in the caption"]
    if short_title and stats and len(groups) == 1:
        wrapped = [brief]
    ax.set_title("\n".join(([title] if title else []) + wrapped), fontsize=SMALL, loc="left")
    ax._kstar_statistics = stat_lines  # read by gamma_regions_by for its caption
    if legend:
        handles, names = _region_handles()
        point_handles, point_names = ax.get_legend_handles_labels()
        fig.legend(handles + point_handles, names + point_names, loc="outside lower center", ncol=3,
                   fontsize=SMALL, frameon=False)
    _style_axes(ax, FONT)
    ax.title.set_fontsize(SMALL)
    _label_column(ax, chosen, x, y, "_label", SMALL)
    bars = []
    if any_seeds_shown:
        bars.append("large markers: the mean of a configuration's seeds, bars spanning the range over its seeds")
    own = [text for cols, text in ((ycols, "vertical bars: 95% bootstrap interval of Gamma'"),
                                   (xcols, "horizontal bars: 95% Wilson interval of the accuracy")) if cols]
    if own:
        bars.append(("faint points (single seeds): " if any_seeds_shown else "") + "; ".join(own))
    alt = (f"Scatter plot of Gamma' against {xlabel or x} for {len(data)} rows"
           + (f", grouped by {hue}" if hue else "") + " on three bands: mostly fractured above "
           f"{threshold}, overlapped between, clustered below -{threshold}"
           + (f"; {'; '.join(bars)}" if bars else "") + (f". {'. '.join(stat_lines)}" if stat_lines else "") + ".")
    bands = _bands_text(threshold) + "."
    ax._kstar_near = int(near.sum())  # read by gamma_regions_by, which says it once for all panels
    if near.any() and legend:
        bars.append(f"black rings: {int(near.sum())} row{'' if near.sum() == 1 else 's'} with accuracy within "
                    f"{chance_margin:g} of chance")
    statistics = [f"{line}." for line in stat_lines] if crowded else []
    return _finish(fig, alt, " ".join([bands] + [b[0].upper() + b[1:] + "." for b in bars] + statistics))


def gamma_regions_by(frame: pd.DataFrame, x: str, by: str, y: str = "gamma_prime", columns: int = 3,
                     title: str | None = None, **kwargs: Any) -> Figure:
    """Small multiples of :func:`gamma_regions`: one panel per value of ``by`` (e.g. per data set), each with its
    own correlation in its title, on one Gamma' scale. Where five groups in one scatter hid each other's points and
    pushed their statistics out of the plot, each group now has its own panel; the full statistics are in the
    caption. ``kwargs`` go to every panel (``config``, ``units``, ``xlabel``, ...)."""
    if by not in frame:
        raise KStarInputError(f"gamma_regions_by needs column {by!r}; the table has {list(frame.columns)}.")
    groups = list(frame.groupby(by, sort=False))
    columns = max(1, min(columns, len(groups)))
    rows = math.ceil(len(groups) / columns)
    fig = _new_figure(3.1 * rows + 1.5)
    axes = np.atleast_1d(fig.subplots(rows, columns, sharey=True)).ravel()
    kwargs = {"label": "label", **kwargs, "legend": False, "short_title": True, "hue": None}
    statistics, limits = [], []
    for ax, (name, part) in zip(axes, groups):
        gamma_regions(part, x, y=y, ax=ax, title=str(name), **kwargs)
        limits.append(ax.get_ylim())  # each panel sets the shared scale to its own points: take the union after
        statistics += [f"{name}: {line}." for line in getattr(ax, "_kstar_statistics", [])]
        ax.set_ylabel("Gamma'" if ax in axes[::columns] else "", fontsize=FONT)
    axes[0].set_ylim(min(lo for lo, _ in limits), max(hi for _, hi in limits))
    for ax in axes[len(groups):]:
        ax.axis("off")
    handles, names = _region_handles()
    point_handles, point_names = axes[0].get_legend_handles_labels()
    fig.legend(handles + point_handles, names + point_names, loc="outside lower center", ncol=3, fontsize=SMALL,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=FONT + 1, x=0.01, ha="left")
    near = sum(getattr(ax, "_kstar_near", 0) for ax in axes)
    rings = (f"Black rings: {near} row{'' if near == 1 else 's'} with accuracy within "
             f"{kwargs.get('chance_margin', CHANCE_MARGIN):g} of chance." if near else "")
    return _finish(fig, f"One panel per {by} ({', '.join(str(n) for n, _ in groups)}), on one Gamma' scale.",
                   " ".join([caption(fig) or ""] + ([rings] if rings else []) +
                            ["Each panel's title gives Spearman rho, its 95% interval and p; in full:"] + statistics))


def _aggregate_cells(table: pd.DataFrame, keys: list[str], value: str, extra: list[str]) -> pd.DataFrame:
    """Mean over rows that share ``keys`` (seeds), with min, max and the number of rows."""
    cols = [c for c in [value, *extra] if c in table]
    agg = table.groupby(keys, sort=False)[cols].mean()
    agg[f"{value}_min"] = table.groupby(keys, sort=False)[value].min()
    agg[f"{value}_max"] = table.groupby(keys, sort=False)[value].max()
    agg["rows"] = table.groupby(keys, sort=False)[value].size()
    return agg.reset_index()


def near_chance(acc: Any, chance: Any, margin: float = CHANCE_MARGIN) -> np.ndarray:
    """Where an accuracy lies within ``margin`` of chance: there Gamma' describes a model that has not learned the
    task, so every figure and table marks it. NaN (an accuracy not measured) is never near."""
    a = np.asarray(acc, dtype=np.float64)
    c = np.asarray(chance, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(a) & np.isfinite(c) & (a <= c + margin)


def gamma_colormap(threshold: float, limit: float) -> LinearSegmentedColormap:
    """The heatmap's colour map over [-limit, limit]: its overlapped band [-threshold, threshold] one pale red, so that
    a cell's colour names its region as the scatters' regions do (a single diverging map made overlapped look like
    "no value")."""
    edge = min(max(threshold / limit, 0.0), 1.0) if limit > 0 else 0.0
    lo, hi = (1 - edge) / 2, (1 + edge) / 2
    return LinearSegmentedColormap.from_list("kstar_gamma", [
        (0.0, HEATMAP_CLUSTERED[0]), (lo, HEATMAP_CLUSTERED[1]), (lo, HEATMAP_OVERLAPPED),
        (hi, HEATMAP_OVERLAPPED), (hi, HEATMAP_FRACTURED[0]), (1.0, HEATMAP_FRACTURED[1])])


def gamma_heatmap(table: pd.DataFrame, row: str = "model", col: str = "data", value: str = "gamma_prime",
                  accuracy: str | None = "accuracy", chance: float | str | None = None,
                  chance_margin: float = CHANCE_MARGIN, threshold: float = metrics.DEFAULT_THRESHOLD,
                  row_order: Sequence | None = None, col_order: Sequence | None = None,
                  title: str | None = None) -> Figure:
    """Figure 4 as a model x data set heatmap of Gamma', each cell annotated with its value (and its bootstrap
    interval when ``{value}_lo``/``{value}_hi`` exist). Several rows per cell (seeds) are averaged and the cell says
    how many. A dagger and hatching mark cells whose ``accuracy`` is within ``chance_margin`` of ``chance`` (a number
    such as 1 / classes, or a column), where Gamma' describes a model that has not learned the task."""
    for c in (row, col, value):
        if c not in table:
            raise KStarInputError(f"gamma_heatmap needs column {c!r}; the table has {list(table.columns)}.")
    table = _mark_near_chance(table, accuracy, chance, chance_margin)
    extra = [c for c in (f"{value}_lo", f"{value}_hi", accuracy, "_near") if c in table]
    agg = _aggregate_cells(table, [row, col], value, extra)
    rows = list(row_order) if row_order is not None else list(dict.fromkeys(table[row]))
    cols = list(col_order) if col_order is not None else list(dict.fromkeys(table[col]))
    grid = agg.pivot(index=row, columns=col, values=value).reindex(index=rows, columns=cols)
    cell = {(r[row], r[col]): r for _, r in agg.iterrows()}
    finite = grid.to_numpy(dtype=float)[np.isfinite(grid.to_numpy(dtype=float))]
    lim = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
    height = max(2.8, 0.55 * len(rows) + 1.9)
    fig = _new_figure(height)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid.to_numpy(dtype=float)), cmap=gamma_colormap(threshold, lim),
                   vmin=-lim, vmax=lim, aspect="auto")
    has_ci = f"{value}_lo" in agg and f"{value}_hi" in agg
    flagged = 0
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            rec = cell.get((r, c))
            if rec is None or np.isnan(rec[value]):
                ax.text(j, i, "-", ha="center", va="center", fontsize=FONT, color="0.4")
                continue
            if np.isinf(rec[value]):  # a perfectly separated space: no colour on the scale, but a value
                ax.text(j, i, _fmt_gamma(float(rec[value])), ha="center", va="center", fontsize=FONT)
                continue
            v = float(rec[value])
            near = "_near" in rec and bool(rec["_near"] > 0)  # any of the cell's rows (seeds) near chance
            text = _num(v) + ("†" if near else "")
            if has_ci and np.isfinite(rec[f"{value}_lo"]) and np.isfinite(rec[f"{value}_hi"]):
                text += f"\n[{_num(rec[f'{value}_lo'])}, {_num(rec[f'{value}_hi'])}]"  # whether it excludes 0
            if rec["rows"] > 1:
                text += f"\n{int(rec['rows'])} seeds"
            dark = abs(v) > 0.6 * lim
            ax.text(j, i, text, ha="center", va="center", fontsize=SMALL, color="white" if dark else "black",
                    linespacing=1.05)
            if near:
                flagged += 1
                ax.add_patch(plt.Rectangle((j - 0.45, i - 0.42), 0.9, 0.84, fill=False, ec="#D55E00", lw=2.5,
                                           ls="--"))
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.xaxis.tick_top()
    # the columns' name sits in the corner left of their header row, as in a table: centred above the headers it
    # read as one of them
    ax.annotate(f"{col} \u2192", (0, 1), xycoords="axes fraction", xytext=(-6, 4), textcoords="offset points",
                ha="right", va="bottom", fontsize=FONT, style="italic")
    ax.set_ylabel(row, fontsize=FONT)
    cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cb.set_label("Gamma'", fontsize=FONT)
    cb.ax.tick_params(labelsize=FONT)
    for t in (threshold, -threshold):
        cb.ax.axhline(t, color="black", lw=0.8)
    pooled = int(agg["rows"].max()) if len(agg) else 1
    notes = [f"Each cell: Gamma' (the colour: > {threshold:g} fractured, blue; < -{threshold:g} clustered, green; "
             "between them overlapped, pale red)"]
    if pooled > 1:
        notes.append("a cell of several rows (seeds) shows their mean, and says how many")
    if has_ci:
        notes.append("brackets: 95% bootstrap interval of Gamma'" + (" (the mean of the rows' bounds)" if pooled > 1
                                                                     else ""))
    if flagged:
        notes.append(f"† and dashed frame: accuracy within {chance_margin:g} of chance"
                     + (" in at least one of the cell's rows" if pooled > 1 else ""))
    elif "_near" in table:  # only what was checked is said
        notes.append(f"no {'row' if pooled > 1 else 'cell'} has accuracy within {chance_margin:g} of chance")
    if title:
        ax.set_title(title, fontsize=SMALL, loc="left")
    _style_axes(ax, FONT)
    ax.title.set_fontsize(SMALL)
    alt = (f"Heatmap of Gamma' for {len(rows)} {row}s (rows) by {len(cols)} {col} values (columns), each cell "
           f"annotated with its value; green is clustered, pale red overlapped, blue fractured"
           + (f"; {flagged} cell{'' if flagged == 1 else 's'} marked with a dagger where accuracy is near chance"
              if chance is not None else "")
           + ".")
    return _finish(fig, alt, "; ".join(notes) + ".")


def gamma_lines(table: pd.DataFrame, x: str = "data", y: str = "gamma_prime", model: str = "model",
                accuracy: str | None = "accuracy", chance: float | str | None = None,
                chance_margin: float = CHANCE_MARGIN, threshold: float = metrics.DEFAULT_THRESHOLD,
                order: Sequence | None = None, title: str | None = None) -> Figure:
    """Figure 4 as lines: Gamma' of each model (one colour, marker and line style each) across the data sets on the
    x axis, over the three regions, and a black ring where the model's accuracy is within ``chance_margin`` of
    ``chance``. Where several rows share (model, data set), e.g. the seeds of a configuration, each point is their
    mean and its bars span their range (an average of bootstrap bounds is not an interval of anything); otherwise the
    bars are the bootstrap intervals ``{y}_lo``/``{y}_hi`` when they exist. Models are dodged sideways a little so
    their bars stay apart."""
    for c in (x, y, model):
        if c not in table:
            raise KStarInputError(f"gamma_lines needs column {c!r}; the table has {list(table.columns)}.")
    table = _mark_near_chance(table, accuracy, chance, chance_margin)
    extra = [c for c in (f"{y}_lo", f"{y}_hi", accuracy, "_near") if c in table]
    agg = _aggregate_cells(table, [model, x], y, extra)
    cats = list(order) if order is not None else list(dict.fromkeys(table[x]))
    models = list(dict.fromkeys(table[model]))
    fig = _new_figure(5.8)
    ax = fig.add_subplot()
    values = agg[y].replace([np.inf, -np.inf], np.nan)
    pooled = int(agg["rows"].max()) if len(agg) else 1  # rows (seeds) behind a point
    bars = (f"{y}_min", f"{y}_max") if pooled > 1 else (f"{y}_lo", f"{y}_hi")  # what the bars span: the axis too
    lows = agg.get(bars[0], values).replace([np.inf, -np.inf], np.nan)
    highs = agg.get(bars[1], values).replace([np.inf, -np.inf], np.nan)
    _regions(ax, threshold, float(np.nanmin([values.min(), lows.min()])) if values.notna().any() else -1,
             float(np.nanmax([values.max(), highs.max()])) if values.notna().any() else 1)
    width = 0.5 / max(len(models), 1)
    flagged = 0
    for k, m in enumerate(models):
        part = agg[agg[model] == m].set_index(x).reindex(cats)
        xs = np.arange(len(cats)) + (k - (len(models) - 1) / 2) * width
        colour = OKABE_ITO[k % len(OKABE_ITO)]
        vals = part[y].to_numpy(float)
        if pooled > 1:
            err = _errors(vals, part[f"{y}_min"].to_numpy(float), part[f"{y}_max"].to_numpy(float))
        elif f"{y}_lo" in part:
            err = _errors(vals, part[f"{y}_lo"].to_numpy(float), part[f"{y}_hi"].to_numpy(float))
        else:
            err = None
        ax.errorbar(xs, vals, yerr=err, color=colour, marker=MARKERS[k % len(MARKERS)],
                    ls=LINESTYLES[(k // len(OKABE_ITO)) % len(LINESTYLES)], ms=7, mec="black", mew=0.6, lw=1.4,
                    capsize=2, label=str(m), zorder=4)
        if "_near" in part:  # a point is marked when any of its rows (seeds) is near chance, not only their mean
            near = part["_near"].to_numpy(float) > 0
            if near.any():
                flagged += int(near.sum())
                ax.scatter(xs[near], vals[near], marker="o", s=300, facecolor="none", edgecolor="black", lw=1.4,
                           zorder=6)  # a ring, not a cross: the point itself stays visible
    ax.set_xticks(range(len(cats)), [str(c) for c in cats])
    ax.set_xlim(-0.5, len(cats) - 0.5)
    ax.set_xlabel(x, fontsize=FONT)
    ax.set_ylabel("Gamma' (approximate skewness coefficient)", fontsize=FONT)
    notes = [_bands_text(threshold)]
    if pooled > 1:
        notes.append(f"each point: the mean of a {model}'s {pooled} rows (seeds); bars: their range")
    elif f"{y}_lo" in agg:
        notes.append("bars: 95% bootstrap interval of Gamma'")
    if flagged:
        notes.append(f"black rings: accuracy within {chance_margin:g} of chance"
                     + (" in at least one of the point's rows (seeds)" if pooled > 1 else ""))
    elif "_near" in table:  # in words, not a legend entry
        notes.append(f"no {'row (seed)' if pooled > 1 else 'point'} has accuracy within {chance_margin:g} of chance")
    if title:
        ax.set_title(title, fontsize=SMALL, loc="left")
    handles, names = _region_handles()
    mh, mn = ax.get_legend_handles_labels()
    if flagged:
        mh.append(plt.Line2D([], [], marker="o", mfc="none", mec="black", ls="none", ms=12, mew=1.4))
        mn.append(f"accuracy within {chance_margin:g} of chance")
    fig.legend(mh + handles, mn + names, loc="outside right upper", fontsize=SMALL, frameon=False)
    _style_axes(ax, FONT)
    ax.title.set_fontsize(SMALL)
    alt = (f"Line plot of Gamma' for {len(models)} {model}s across {len(cats)} {x} values ({', '.join(map(str, cats))})"
           f", one line per {model}, over bands for mostly fractured, overlapped and clustered"
           + (f"; each point the mean of {pooled} rows (seeds), bars their range" if pooled > 1 else "")
           + (f"; {flagged} point{'' if flagged == 1 else 's'} marked as near chance accuracy"
              if chance is not None else "") + ".")
    return _finish(fig, alt, "; ".join(notes) + ".")


def _mark_near_chance(table: pd.DataFrame, accuracy: str | None, chance: float | str | None,
                      margin: float) -> pd.DataFrame:
    """``table`` with ``_near`` (1.0 where a row's accuracy is within ``margin`` of ``chance``), so that a cell or
    point averaging several rows (seeds) can be marked when any of them is, not only when their mean is."""
    if not accuracy or accuracy not in table or chance is None:
        return table
    ch = table[chance].to_numpy(float) if isinstance(chance, str) else chance
    return table.assign(_near=near_chance(table[accuracy].to_numpy(float), ch, margin).astype(float))


# ------------------------------------------------------------------------------------------- beyond: the fracture
def _as_images(images: Any) -> tuple[np.ndarray, bool]:
    """Images as float (N, H, W) or (N, H, W, 3) in [0, 1]; accepts uint8, [0, 1] floats, (N, C, H, W) and C = 1."""
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 1, -1)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3):
        raise KStarInputError(f"images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3; got shape "
                              f"{arr.shape}.")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, arr.ndim == 3
    arr = arr.astype(np.float32)
    if np.nanmin(arr) < -1e-6 or np.nanmax(arr) > 1 + 1e-6:
        raise KStarInputError(f"float images must lie in [0, 1] (got {np.nanmin(arr):.3g} to {np.nanmax(arr):.3g}); "
                              f"undo the normalisation or pass uint8 images.")
    return np.clip(arr, 0, 1), arr.ndim == 3


def _nearest_foreign(features: np.ndarray, labels: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Index of each query's nearest sample of another class, from :mod:`kstar_utils.neighbours` (SPEC distances)."""
    from . import neighbours

    return np.asarray(neighbours.nearest_foreign_index(features, labels, queries, metric))


def most_fractured_classes(result: KStarResult, n_classes: int = 3) -> list:
    """The classes with the largest skew (+inf first, NaN last): the concepts most split by foreign samples."""
    table = result.per_class.copy()
    table["_key"] = table["skew"].fillna(-np.inf)
    return list(table.sort_values("_key", ascending=False, kind="stable")["label"].head(n_classes))


def fracture_gallery(images: Any, labels: Sequence, class_names: Sequence | dict | None, kstar: KStarResult,
                     features: Any = None, n_classes: int = 3, n_per_class: int = 4, metric: str | None = None,
                     nearest: Callable[..., Any] | None = None, title: str | None = None) -> Figure:
    """For the most fractured concepts, the evaluated images with the smallest k* beside their nearest foreign
    neighbour in the latent space (class names on both): what splits a concept, seen.

    ``images`` (N, H, W) / (N, H, W, C) / (N, C, H, W), uint8 or floats in [0, 1], in the same order as ``labels``,
    ``features`` and the k* result. ``class_names`` maps label -> name (a sequence indexed by integer labels or a
    dict; None uses the labels). ``metric`` defaults to the one the k* result was computed with. ``nearest`` replaces
    the neighbour search (signature of ``neighbours.nearest_foreign_index(features, labels, queries, metric)``);
    with it ``features`` may be None (a report page passes the partners its k* task found). Ties in k* are broken by
    sample order.
    """
    imgs, grey = _as_images(images)
    y = np.asarray(labels)
    if features is None and nearest is None:
        raise KStarInputError("fracture_gallery needs the features, or nearest= giving each query's foreign partner.")
    feats = np.asarray(features) if features is not None else np.empty((len(y), 0))
    if not (len(imgs) == len(y) == len(feats) == len(kstar.kstar)):
        raise KStarInputError(f"images ({len(imgs)}), labels ({len(y)}), features ({len(feats)}) and k* "
                              f"({len(kstar.kstar)}) must describe the same samples in the same order.")
    if n_per_class < 1 or n_classes < 1:
        raise KStarInputError("fracture_gallery needs n_classes >= 1 and n_per_class >= 1.")

    def name_of(v: Any) -> str:
        if class_names is None:
            return str(v)
        if isinstance(class_names, dict):
            return str(class_names.get(v, class_names.get(str(v), v)))
        try:
            return str(class_names[int(v)])
        except (ValueError, IndexError, TypeError):
            return str(v)

    metric = metric or kstar.params.get("metric", "euclidean")
    result_labels = np.asarray(kstar.labels).astype(str)
    chosen = most_fractured_classes(kstar, n_classes)
    queries, rows = [], []
    for c in chosen:
        members = np.flatnonzero(result_labels == str(c))
        order = members[np.lexsort((members, kstar.kstar[members]))][:n_per_class]
        queries.extend(order.tolist())
        rows.append((c, order))
    finder = nearest or _nearest_foreign
    found = np.asarray(finder(feats, y, np.asarray(queries, dtype=np.int64), metric))
    partner = dict(zip(queries, found.tolist()))
    skew_of = dict(zip(kstar.per_class["label"].astype(str), kstar.per_class["skew"]))
    pattern_of_class = dict(zip(kstar.per_class["label"].astype(str), kstar.per_class["pattern"]))
    fig = _new_figure(2.25 * len(rows) + 0.6)
    subs = fig.subfigures(len(rows), 1) if len(rows) > 1 else [fig.subfigures(1, 1)]
    for sub, (c, members) in zip(np.atleast_1d(subs), rows):
        sub.suptitle(f"'{name_of(c)}': {_skew_text(float(skew_of[str(c)]))}, "
                     f"{str(pattern_of_class[str(c)]).lower()}; smallest k* (left of each pair) and "
                     f"its nearest foreign neighbour (right)", fontsize=FONT, x=0.01, ha="left")
        axes = sub.subplots(1, 2 * n_per_class)
        for k in range(n_per_class):
            for side in range(2):
                ax = axes[2 * k + side]
                ax.set_xticks([])
                ax.set_yticks([])
                if k >= len(members):
                    ax.axis("off")
                    continue
                idx = int(members[k]) if side == 0 else int(partner[int(members[k])])
                ax.imshow(imgs[idx], cmap="gray" if grey else None, vmin=0, vmax=1, interpolation="nearest")
                if side == 0:
                    ax.set_title(f"{name_of(y[idx])}\nk* = {int(kstar.kstar[idx])}", fontsize=SMALL)
                else:
                    ax.set_title(f"{name_of(y[idx])}\nneighbour", fontsize=SMALL)
                    for spine in ax.spines.values():
                        spine.set_edgecolor("#D55E00")
                        spine.set_linewidth(2)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    alt = ("Gallery of the most fractured concepts: "
           + "; ".join(f"{name_of(c)}: {len(m)} images with the smallest k* next to their nearest neighbours from "
                       f"classes {', '.join(sorted({name_of(y[partner[int(i)]]) for i in m}))}" for c, m in rows)
           + ".")
    return _finish(fig, alt)


__all__ = [
    "CHANCE_MARGIN",
    "DISPLAY_WIDTH_PX",
    "MIN_FONT_PT",
    "OKABE_ITO",
    "REGION_FILL",
    "SAVE_DPI",
    "alt_text",
    "caption",
    "clipped_texts",
    "displayed_font_sizes",
    "embedding_scatter",
    "figure_png",
    "fracture_gallery",
    "framework_figure",
    "framework_schematic",
    "gamma_heatmap",
    "gamma_lines",
    "gamma_prime_rule",
    "gamma_regions",
    "gamma_regions_by",
    "kstar_density",
    "kstar_distributions",
    "compare_distributions",
    "compare_embeddings",
    "most_fractured_classes",
    "near_chance",
    "overlapping_texts",
    "readability_problems",
    "small_texts",
]
