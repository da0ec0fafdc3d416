"""The built-in offline study: a zoo of small standard and adversarially trained CNNs on real data (digits,
Fashion-MNIST), trained on the CPU, evaluated with AutoAttack, and analysed with k* like any other feature source."""

from .study import ZooModel, ensure_trained, zoo_models

__all__ = ["ZooModel", "ensure_trained", "zoo_models"]
