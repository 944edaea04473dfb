"""The losses the inner loop descends, and their gradients, as pure functions of the weights.

Written functionally over a `Params` dict (`torch.func.functional_call`), so no module is ever
mutated. A loss is that of one task, or the (tasks,) losses of weights stacked over tasks, as
a family's `batching` says (`batched_loss`); its gradient comes from autograd, or, for the
"stacked" batching, from the family's written-out backward pass (`batched_gradient`).
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from reptile.params import Params
from reptile.tasks.base import Batching, Gradient, Task, TaskFamily

LossFn = Callable[[Tensor, Tensor], Tensor]
BatchLoss = Callable[[Params, Tensor, Tensor], Tensor]  # (params, inputs, targets) -> loss(es)


def batch_loss(model: nn.Module, loss_fn: LossFn) -> BatchLoss:
    """The loss as a pure function of (params, inputs, targets), ready for `vmap`."""

    def loss(params: Params, inputs: Tensor, targets: Tensor) -> Tensor:
        return loss_fn(functional_call(model, params, (inputs,)), targets)

    return loss


def task_loss(model: nn.Module, params: Params, loss_fn: LossFn, task: Task) -> Tensor:
    """The loss of `params` on all of the task's points."""
    return batch_loss(model, loss_fn)(params, task.inputs, task.targets)


def tasks_loss(model: nn.Module, loss_fn: LossFn, batching: Batching) -> BatchLoss:
    """The (tasks,) losses of weights stacked over tasks, on inputs and targets stacked alike.

    "stacked": the model takes stacked weights itself (`reptile.models.StackableLinear`) and the
    family's loss reduces each task's points alone, so no `vmap` at all; "vmap": the whole
    forward pass and loss are `vmap`ped over the tasks.
    """
    if batching == "stacked":
        return batch_loss(model, loss_fn)
    if batching == "vmap":
        return vmap(batch_loss(model, loss_fn))
    raise ValueError(f"{batching!r} runs task by task: there is no loss over stacked tasks")


def autograd_gradient(
    loss: BatchLoss, weights: Params, inputs: Tensor, targets: Tensor
) -> tuple[Params, Tensor]:
    """The gradient of the summed loss with respect to `weights` (left untouched), and the loss.

    For a per-task loss over weights stacked per task, each task's loss depends on its own
    weights only: the result is every task's own gradient, stacked, and the (tasks,) losses.
    Plain autograd, which also works under an outer `no_grad`, and costs less than
    `torch.func.grad`'s wrapping of every op on small tensors (`traced_gradient` is for
    `torch.compile`, which breaks its graph at `autograd.grad`).
    """
    with torch.enable_grad():
        leaves = {name: w.detach().requires_grad_() for name, w in weights.items()}
        losses = loss(leaves, inputs, targets)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
    return dict(zip(leaves, grads, strict=True)), losses.detach()


def traced_gradient(
    loss: BatchLoss, weights: Params, inputs: Tensor, targets: Tensor
) -> tuple[Params, Tensor]:
    """`autograd_gradient` through `torch.func.grad_and_value`, which `torch.compile` traces
    whole."""

    def summed(w: Params) -> tuple[Tensor, Tensor]:
        losses = loss(w, inputs, targets)
        return losses.sum(), losses.detach()

    grads, (_, losses) = grad_and_value(summed, has_aux=True)(weights)
    return grads, losses


def loss_gradient(loss: BatchLoss, *, traced: bool = False) -> Gradient:
    """The `Gradient` of `loss` by autograd; `traced`, one that `torch.compile` traces whole."""
    return partial(traced_gradient if traced else autograd_gradient, loss)


def batched_loss(family: TaskFamily, model: nn.Module) -> BatchLoss:
    """The loss over the family's tasks as `family.batching` runs them: one task's ("loop"),
    or per task over stacked tasks; what training chunks and evaluation score with."""
    if family.batching == "loop":
        return batch_loss(model, family.loss)
    return tasks_loss(model, family.loss, family.batching)


def batched_gradient(family: TaskFamily, model: nn.Module, *, traced: bool = False) -> Gradient:
    """The gradient of `batched_loss`: the family's own over stacked tasks ("stacked"), else
    autograd's (`traced`: one that `torch.compile` traces whole)."""
    if family.batching == "stacked":
        return family.stacked_gradient
    return loss_gradient(batched_loss(family, model), traced=traced)
