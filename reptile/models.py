"""Models of the paper: an MLP for sine regression (Conv4 for images comes with that family)."""

from torch import nn


def sine_mlp(hidden: int = 64) -> nn.Sequential:
    """The 1-64-64-1 MLP of the sine experiments (tanh, as in the Reptile blog's example)."""
    return nn.Sequential(
        nn.Linear(1, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1),
    )
