"""The built-in offline study: a zoo of small standard and adversarially trained CNNs on real data (digits,
Fashion-MNIST), trained on the CPU, evaluated with AutoAttack, and analysed with k*."""

from .study import PROFILES, Profile, StudyResult, run_study

__all__ = ["PROFILES", "Profile", "StudyResult", "run_study"]
