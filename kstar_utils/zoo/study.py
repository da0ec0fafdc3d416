"""The built-in offline study: does a more robust (or more general) model fracture concepts less?

Two families of small CNNs are trained on real data on the CPU (see :mod:`kstar_utils.zoo.train`):

* **robustness**: a standard model and PGD adversarially trained models at three budgets under Linf and three under
  L2. Each is evaluated as RobustBench evaluates: clean accuracy, and AutoAttack robust accuracy at one evaluation
  epsilon per norm: each model under its own threat model, the standard model under both (as on RobustBench's
  leaderboards). This is the offline analogue of the paper's Figure 3.
* **generalisation**: standard models of different capacity (width) and training-set size, evaluated on shifted
  versions of the test set (noise, blur, rotation, contrast): accuracy and k* per shifted set, the offline analogue of
  the OpenCLIP figure (Figure 4), where the mean accuracy over the shifted sets plays the role of the zero-shot
  average.

k* is computed on the penultimate layer (the input of the classifier) of the test split. Everything is cached: trained
models in the zoo folder, features in the feature cache, so a second run takes seconds.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import metrics
from ..errors import KStarInputError
from ..kstar import KStarResult, compute_kstar
from .attacks import accuracy, autoattack_accuracy
from .data import class_names, load_tensors
from .train import ZooModelSpec, default_zoo_dir, load_trained, save_trained, train_model


@dataclass(frozen=True)
class Profile:
    """A study configuration: data set, training lengths, budgets, evaluation epsilons and shifts."""

    name: str
    dataset: str
    epochs: int
    robust_epochs: int
    linf_budgets: tuple[float, ...]
    l2_budgets: tuple[float, ...]
    eval_eps: dict
    attack_samples: int
    attack_version: str = "standard"
    widths: tuple[int, ...] = (4, 8, 32)
    fractions: tuple[float, ...] = (0.1, 0.3)
    base_width: int = 16
    latent: int = 64
    batch_size: int = 64
    pgd_steps: int = 5
    kstar_per_class: int | None = None
    train_limit: int | None = None
    shifts: tuple[str, ...] = ("noise", "blur", "rotation", "contrast")
    seed: int = 0


PROFILES: dict[str, Profile] = {
    # seconds: two tiny models, for tests and a first look
    "smoke": Profile("smoke", "digits", epochs=3, robust_epochs=3, linf_budgets=(0.1,), l2_budgets=(),
                     eval_eps={"Linf": 0.1, "L2": 0.5}, attack_samples=60, attack_version="apgd-ce",
                     widths=(8,), fractions=(), base_width=8, latent=32, shifts=("noise", "blur")),
    # the default: scikit-learn's digits, minutes on two CPU cores
    "digits": Profile("digits", "digits", epochs=30, robust_epochs=30, linf_budgets=(0.05, 0.1, 0.2),
                      l2_budgets=(0.25, 0.5, 1.0), eval_eps={"Linf": 0.1, "L2": 0.5}, attack_samples=150),
    # the larger profile: real Fashion-MNIST
    # the larger profile: real Fashion-MNIST, 20,000 training images (a seeded subset), within 45 minutes on 2 cores
    "fashion": Profile("fashion", "fashion-mnist", epochs=8, robust_epochs=6, linf_budgets=(0.05, 0.1, 0.15),
                       l2_budgets=(0.5, 1.0, 2.0), eval_eps={"Linf": 0.1, "L2": 1.0}, attack_samples=200,
                       batch_size=128, pgd_steps=3, kstar_per_class=300, fractions=(0.1, 0.3), widths=(4, 16),
                       base_width=8, train_limit=20_000),
}


def robustness_specs(p: Profile) -> list[ZooModelSpec]:
    base = dict(dataset=p.dataset, width=p.base_width, latent=p.latent, batch_size=p.batch_size, seed=p.seed,
                pgd_steps=p.pgd_steps, train_limit=p.train_limit)
    specs = [ZooModelSpec(name=f"{p.dataset}-standard", epochs=p.epochs, **base)]
    for norm, budgets in (("Linf", p.linf_budgets), ("L2", p.l2_budgets)):
        for eps in budgets:
            specs.append(ZooModelSpec(name=f"{p.dataset}-pgd-{norm.lower()}-{eps:g}", training="pgd", norm=norm,
                                      eps=eps, epochs=p.robust_epochs, **base))
    return specs


def generalisation_specs(p: Profile) -> list[ZooModelSpec]:
    base = dict(dataset=p.dataset, latent=p.latent, batch_size=p.batch_size, seed=p.seed, epochs=p.epochs,
                train_limit=p.train_limit)
    specs = [ZooModelSpec(name=f"{p.dataset}-standard", width=p.base_width, pgd_steps=p.pgd_steps, **base)]
    specs += [ZooModelSpec(name=f"{p.dataset}-width{w}", width=w, pgd_steps=p.pgd_steps, **base) for w in p.widths]
    specs += [ZooModelSpec(name=f"{p.dataset}-data{int(round(f * 100))}pct", width=p.base_width, train_fraction=f,
                           pgd_steps=p.pgd_steps, **base) for f in p.fractions]
    return specs


def shift(x: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """A deterministic distribution shift of images in [0, 1] (N, C, H, W)."""
    if kind == "clean":
        return x
    if kind == "noise":
        g = torch.Generator().manual_seed(seed)
        return (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if kind == "blur":
        k = torch.tensor([0.25, 0.5, 0.25])
        kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
    if kind == "rotation":
        angle = math.radians(20.0)
        theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])
        grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    if kind == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (mean + 0.35 * (x - mean)).clamp(0, 1)
    raise KStarInputError(f"unknown shift {kind!r}; use clean, noise, blur, rotation or contrast.")


def penultimate(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """The classifier's input (the zoo models' latent space) for a tensor of images."""
    out = []
    with torch.inference_mode():
        for lo in range(0, len(x), batch_size):
            out.append(model.features(model.body(x[lo:lo + batch_size])))
    return torch.cat(out).numpy().astype(np.float32)


def ensure_trained(spec: ZooModelSpec, zoo_dir: Path, x: torch.Tensor, y: torch.Tensor, progress: bool) -> tuple:
    """The cached model of ``spec``, training (or resuming) it first if needed. Returns (model, folder, meta)."""
    folder = zoo_dir / f"{spec.dataset}-{spec.key()}"
    found = load_trained(folder)
    if found is not None:
        return found[0], folder, found[1]
    start = time.perf_counter()
    model = train_model(spec, x, y, folder, progress=progress)
    meta = {"train_seconds": round(time.perf_counter() - start, 2)}
    save_trained(folder, model, spec, meta)
    return model, folder, json.loads((folder / "meta.json").read_text())


def ensure_evaluated(model, folder: Path, meta: dict, evaluations: dict[str, Any]) -> dict:
    """Add missing evaluations to meta.json (stored with the checkpoint). ``evaluations``: key -> thunk."""
    changed = False
    for key, thunk in evaluations.items():
        if key not in meta.get("evaluation", {}):
            meta.setdefault("evaluation", {})[key] = thunk()
            changed = True
    if changed:
        from ..plumbing import atomic_write_text

        atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2, default=str) + "\n")
    return meta


@dataclass
class StudyResult:
    """Tables of the study, the k* results per (model, data), and the correlation statements."""

    profile: Profile
    robustness: pd.DataFrame
    generalisation: pd.DataFrame
    kstar: dict[str, KStarResult] = field(default_factory=dict)
    correlations: dict = field(default_factory=dict)
    answer: str = ""
    seconds: float = 0.0

    def save(self, out_dir: str | Path) -> Path:
        from ..plumbing import atomic_write_text, write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "robustness.csv", self.robustness.to_csv(index=False))
        atomic_write_text(out / "generalisation.csv", self.generalisation.to_csv(index=False))
        write_json(out / "study.json", {"profile": asdict(self.profile), "correlations": self.correlations,
                                        "answer": self.answer, "seconds": round(self.seconds, 1)})
        kdir = out / "kstar"
        kdir.mkdir(exist_ok=True)
        for name, res in self.kstar.items():
            atomic_write_text(kdir / f"{name}.json", res.to_json())
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "StudyResult":
        f = Path(folder)
        study = json.loads((f / "study.json").read_text())
        prof = dict(study["profile"])
        for key in ("linf_budgets", "l2_budgets", "widths", "fractions", "shifts"):
            prof[key] = tuple(prof[key])
        kstar = {p.stem: KStarResult.from_json(p.read_text()) for p in sorted((f / "kstar").glob("*.json"))}
        return cls(Profile(**prof), pd.read_csv(f / "robustness.csv"), pd.read_csv(f / "generalisation.csv"), kstar,
                   study["correlations"], study["answer"], study["seconds"])


def _kstar_row(res: KStarResult) -> dict:
    counts = res.pattern_counts
    return {"gamma": res.gamma_true, "gamma_prime": res.gamma_approx, "fractured": counts["Fractured"],
            "overlapped": counts["Overlapped"], "clustered": counts["Clustered"]}


def _subset(y: torch.Tensor, per_class: int | None, seed: int) -> np.ndarray:
    from ..datasets import subsample_per_class

    return subsample_per_class(y.numpy(), per_class, seed)


def run_study(profile: str | Profile = "digits", zoo_dir: str | Path | None = None, data_root: str | None = None,
              progress: bool = True) -> StudyResult:
    """Train (or reuse) the zoo, measure robustness and generalisation, compute k*, and answer the question."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
    zoo = Path(zoo_dir) if zoo_dir else default_zoo_dir()
    start = time.perf_counter()
    x_train, y_train = load_tensors(p.dataset, "train", data_root)
    x_test, y_test = load_tensors(p.dataset, "test", data_root)
    names = np.asarray(class_names(p.dataset, data_root), dtype=str)
    k_idx = _subset(y_test, p.kstar_per_class, p.seed)
    k_labels = names[y_test[k_idx].numpy()]
    attack_idx = _subset(y_test, max(1, p.attack_samples // 10), p.seed + 1)
    x_att, y_att = x_test[attack_idx], y_test[attack_idx]
    rows, kstar = [], {}
    specs = robustness_specs(p)
    for spec in tqdm(specs, desc=f"robustness zoo ({p.name})", disable=not progress):
        model, folder, meta = ensure_trained(spec, zoo, x_train, y_train, progress)
        evaluations = {"clean_accuracy": lambda m=model: accuracy(m, x_test, y_test)}
        # As on RobustBench's leaderboards: a model under its own threat model; the standard model under each.
        norms = {n: e for n, e in p.eval_eps.items() if spec.norm in (None, n)}
        for norm, eps in norms.items():
            evaluations[_aa_key(norm, eps, p, len(attack_idx))] = (
                lambda m=model, n=norm, e=eps: _robust(m, x_att, y_att, n, e, p.attack_version, p.seed))
        meta = ensure_evaluated(model, folder, meta, evaluations)
        res = compute_kstar(penultimate(model, x_test[k_idx]), k_labels)
        kstar[spec.name] = res
        ev = meta["evaluation"]
        row = {"model": spec.name, "training": spec.label, "norm": spec.norm or "none", "eps": spec.eps,
               "clean_accuracy": ev["clean_accuracy"]}
        flags = 0
        for norm, eps in p.eval_eps.items():
            found = ev.get(_aa_key(norm, eps, p, len(attack_idx)))
            row[f"robust_accuracy_{norm}"] = found["robust_accuracy"] if found else math.nan
            flags += len(found["autoattack_flags"]) if found else 0
        row["autoattack_flags"] = flags
        rows.append({**row, **_kstar_row(res), "train_seconds": meta.get("train_seconds")})
    robustness = pd.DataFrame(rows)

    grows = []
    for spec in tqdm(generalisation_specs(p), desc=f"generalisation zoo ({p.name})", disable=not progress):
        model, folder, meta = ensure_trained(spec, zoo, x_train, y_train, progress)
        for kind in ("clean",) + tuple(p.shifts):
            xs = shift(x_test, kind, p.seed)
            res = compute_kstar(penultimate(model, xs[k_idx]), k_labels)
            kstar[f"{spec.name}@{kind}"] = res
            grows.append({"model": spec.name, "width": spec.width, "train_fraction": spec.train_fraction,
                          "data": kind, "accuracy": accuracy(model, xs, y_test), **_kstar_row(res)})
    generalisation = pd.DataFrame(grows)
    result = StudyResult(p, robustness, generalisation, kstar)
    result.correlations, result.answer = answer_question(robustness, generalisation, p)
    result.seconds = time.perf_counter() - start
    return result


EVALUATION_VERSION = 2  # bump when an evaluation records something new, so cached ones are recomputed


def _aa_key(norm: str, eps: float, p: Profile, n: int) -> str:
    return f"autoattack_v{EVALUATION_VERSION}_{norm}_{eps:g}_{p.attack_version}_{n}"


def _robust(model, x, y, norm, eps, version, seed) -> dict:
    if version in ("standard", "plus", "rand"):
        return autoattack_accuracy(model, x, y, norm, eps, version=version, seed=seed)
    return autoattack_accuracy(model, x, y, norm, eps, version="custom", attacks=version.split("+"), seed=seed)


def robustness_points(robustness: pd.DataFrame, eval_eps: dict) -> pd.DataFrame:
    """One point per (model, threat model): models trained for a norm under it; the standard model under each."""
    points = []
    for norm in eval_eps:
        sel = robustness[(robustness["norm"] == norm) | (robustness["norm"] == "none")]
        for _, r in sel.iterrows():
            points.append({"model": r["model"], "threat_model": norm, "robust_accuracy": r[f"robust_accuracy_{norm}"],
                           "gamma_prime": r["gamma_prime"], "gamma": r["gamma"]})
    return pd.DataFrame(points)


def answer_question(robustness: pd.DataFrame, generalisation: pd.DataFrame, p: Profile) -> tuple[dict, str]:
    """Correlations of Gamma' with robust accuracy (per norm and pooled) and with shifted-data accuracy, in words."""
    pts = robustness_points(robustness, p.eval_eps)
    corr = {"robustness_pooled": metrics.correlation(pts["robust_accuracy"], pts["gamma_prime"])}
    for norm in p.eval_eps:
        sel = pts[pts["threat_model"] == norm]
        corr[f"robustness_{norm}"] = metrics.correlation(sel["robust_accuracy"], sel["gamma_prime"])
    mean_shift = generalisation.groupby("model").agg(accuracy=("accuracy", "mean"), gamma_prime=("gamma_prime", "mean"))
    corr["generalisation_models"] = metrics.correlation(mean_shift["accuracy"], mean_shift["gamma_prime"])
    corr["generalisation_all_sets"] = metrics.correlation(generalisation["accuracy"], generalisation["gamma_prime"])

    def sentence(c: dict, what: str) -> str:
        if c["n"] < 3 or math.isnan(c["spearman"]):
            return f"{what}: too few points to say (n = {c['n']})."
        numbers = (f"Spearman rho = {c['spearman']:.2f} (p = {c['spearman_p']:.3g}), Pearson r = {c['pearson']:.2f} "
                   f"(p = {c['pearson_p']:.3g}), n = {c['n']}.")
        if abs(c["spearman"]) < 0.1:
            return f"{what}: no monotone relation between Gamma' and accuracy: {numbers}"
        direction = "falls" if c["spearman"] < 0 else "rises"
        strength = "clearly" if c["spearman_p"] < 0.05 else "but not significantly (p >= 0.05)"
        return (f"{what}: Gamma' {direction} as accuracy rises, {strength}: Spearman rho = {c['spearman']:.2f} "
                f"(p = {c['spearman_p']:.3g}), Pearson r = {c['pearson']:.2f} (p = {c['pearson_p']:.3g}), n = {c['n']}.")

    text = "\n".join([
        sentence(corr["robustness_pooled"], "Robustness (all models and threat models pooled)"),
        *[sentence(corr[f"robustness_{n}"], f"Robustness under {n} (eps = {e:g})") for n, e in p.eval_eps.items()],
        sentence(corr["generalisation_all_sets"], "Generalisation (every model on every shifted test set)"),
        sentence(corr["generalisation_models"], "Generalisation (each model's mean over the clean and shifted sets)"),
    ])
    return corr, text
