"""Weights as plain `dict[str, Tensor]`, and the pure arithmetic Reptile needs on them.

Like `variables.py` of openai/supervised-reptile: the meta-update reads as two lines over these
helpers, and the serial loop and the Ray path share them. Functions return new dicts and never
modify their arguments.
"""

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


def params_of(model: nn.Module) -> Params:
    """A detached copy of a model's parameters."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def init_params(model: nn.Module, seed: int) -> Params:
    """Re-initialise `model` from `seed` (leaving the global RNG alone) and return its weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not model and callable(reset):
                reset()
        return params_of(model)


def subtract(a: Params, b: Params) -> Params:
    return {name: a[name] - b[name] for name in a}


def add(a: Params, b: Params) -> Params:
    return {name: a[name] + b[name] for name in a}


def scale(a: Params, factor: float) -> Params:
    return {name: a[name] * factor for name in a}


def total(items: Iterable[Params]) -> Params:
    """Sum in the order given: a fixed order keeps results reproducible across worker counts."""
    iterator = iter(items)
    result = {name: t.clone() for name, t in next(iterator).items()}
    for item in iterator:
        for name in result:
            result[name] += item[name]
    return result


def is_finite(a: Params) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in a.values())


def to_numpy(a: Params) -> dict[str, np.ndarray]:
    """Numpy views for the Ray object store (read zero-copy by workers)."""
    return {name: t.detach().cpu().numpy() for name, t in a.items()}


def from_numpy(a: dict[str, np.ndarray]) -> Params:
    """Tensors that own their memory (object-store arrays are read-only)."""
    return {name: torch.from_numpy(np.array(v, copy=True)) for name, v in a.items()}
