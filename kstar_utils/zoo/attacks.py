"""Attacks for the built-in zoo: PGD for adversarial training, AutoAttack (RobustBench's evaluation) for robustness.

Inputs live in [0, 1]. PGD follows Madry et al.: a random start in the epsilon ball, ``steps`` signed-gradient (Linf)
or normalised-gradient (L2) ascent steps of size ``step_size``, projection back into the ball and into [0, 1].
Robust accuracy is measured with the ``autoattack`` package that RobustBench uses (through kstar_utils.compat),
``version="standard"`` by default, exactly as RobustBench reports it: APGD-CE, APGD-T, FAB-T and Square, run in that
order on the points still robust. ``version="custom"`` runs a stated subset of those attacks *with the standard
version's settings* (APGD-CE one restart, APGD-T and FAB-T nine target classes, Square 5,000 queries), so a cheaper
evaluation such as ``["apgd-ce", "apgd-t"]`` is exactly the first half of the standard run, an upper bound on its robust
accuracy (the package's own custom defaults would silently run APGD-CE with five restarts instead).
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import KStarInputError

NORMS = ("Linf", "L2")
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")  # AutoAttack's standard version, in its order
CHEAP_ATTACKS = ("apgd-ce", "apgd-t")  # the stated cheaper evaluation: the standard version's first two attacks


def _project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int = 7,
        step_size: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial examples by projected gradient ascent on the cross-entropy (model in its current mode)."""
    if norm not in NORMS:
        raise KStarInputError(f"unknown norm {norm!r}; use Linf or L2.")
    step_size = step_size or 2.5 * eps / steps
    if norm == "Linf":
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    else:
        delta = _project_l2(torch.randn(x.shape, generator=generator, device=x.device) * eps, eps)
    delta = ((x + delta).clamp(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "Linf":
                delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
            else:
                g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
                delta = _project_l2(delta + step_size * g, eps)
            delta = ((x + delta).clamp(0, 1) - x).detach()
    return (x + delta).detach()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for lo in range(0, len(x), batch_size):
            correct += (model(x[lo:lo + batch_size]).argmax(1) == y[lo:lo + batch_size]).sum().item()
    return correct / max(len(x), 1)


def autoattack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float,
                        version: str = "standard", batch_size: int = 500, seed: int = 0,
                        attacks: list[str] | None = None) -> dict:
    """Robust accuracy under AutoAttack (the RobustBench protocol), with the attacks that ran recorded.

    ``version="custom"`` with ``attacks`` (a subset of :data:`STANDARD_ATTACKS`, e.g. :data:`CHEAP_ATTACKS`) runs
    those attacks with the standard version's settings: cheaper, never lower than the standard robust accuracy on the
    same images and seed, and recorded as such (``attacks``, ``settings``).
    """
    from ..compat import alias_autoattack

    alias_autoattack()
    from autoattack import AutoAttack

    if norm not in NORMS:
        raise KStarInputError(f"unknown norm {norm!r}; use Linf or L2.")
    if version == "custom":
        unknown = [a for a in attacks or [] if a not in STANDARD_ATTACKS]
        if not attacks or unknown:
            raise KStarInputError(f"a custom AutoAttack needs attacks from {', '.join(STANDARD_ATTACKS)}, got "
                                  f"{attacks!r}; e.g. attack_version: apgd-ce+apgd-t.")
        attacks = [a for a in STANDARD_ATTACKS if a in attacks]  # the standard version's order
    model.eval()
    adversary = AutoAttack(model, norm=norm, eps=eps, version=version, device=str(x.device), seed=seed,
                           attacks=attacks if version == "custom" else None)
    if version == "custom":
        _standard_settings(adversary)
    adversary.verbose = False
    checks = _Collect()  # AutoAttack's own reliability flags (e.g. a black-box attack beating the white-box ones)
    logger = logging.getLogger("auto-attack")
    logger.addHandler(checks)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)  # (x_adv, y_adv)
    finally:
        logger.removeHandler(checks)
    robust = accuracy(model, x_adv, y)  # re-checked on the returned examples, not taken from the attack's log
    flags = checks.messages + [str(w.message) for w in caught if "autoattack" in (w.filename or "").lower()]
    return {"robust_accuracy": robust, "norm": norm, "eps": eps, "version": version,
            "attacks": list(adversary.attacks_to_run), "n": len(x), "autoattack_flags": flags,
            "settings": _settings(adversary)}


def _standard_settings(adversary) -> None:
    """The per-attack settings AutoAttack's standard version uses for Linf and L2."""
    adversary.apgd.n_restarts = 1
    adversary.apgd_targeted.n_target_classes = 9
    adversary.apgd_targeted.n_restarts = 1
    adversary.fab.n_restarts = 1
    adversary.fab.n_target_classes = 9
    adversary.square.n_queries = 5000


def _settings(adversary) -> dict:
    return {"apgd_ce_restarts": adversary.apgd.n_restarts, "apgd_t_target_classes": adversary.apgd_targeted.n_target_classes,
            "fab_t_target_classes": adversary.fab.n_target_classes, "square_queries": adversary.square.n_queries,
            "iterations": adversary.apgd.n_iter}


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
