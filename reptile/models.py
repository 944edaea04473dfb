"""Models of the paper: an MLP for sine regression, Conv4 for few-shot image classification."""

import torch
from torch import Tensor, nn


class StackableLinear(nn.Linear):
    """`nn.Linear` that also takes the weights of many tasks at once.

    Under `functional_call` with weights stacked over tasks, (tasks, out, in) and (tasks, out),
    and inputs (tasks, n, in), a layer is one batched matmul for all tasks: a chunk's inner
    loops then need no `vmap` (reptile.inner, batching "stacked"). Its parameters, and so
    checkpoints and state dicts, are those of `nn.Linear`.
    """

    def forward(self, inputs: Tensor) -> Tensor:
        if self.weight.dim() == 2:
            return super().forward(inputs)
        return torch.baddbmm(self.bias.unsqueeze(1), inputs, self.weight.mT)


def sine_mlp(hidden: int = 64) -> nn.Sequential:
    """The 1-64-64-1 MLP of the sine experiments (tanh, as in the Reptile blog's example)."""
    return nn.Sequential(
        StackableLinear(1, hidden),
        nn.Tanh(),
        StackableLinear(hidden, hidden),
        nn.Tanh(),
        StackableLinear(hidden, 1),
    )


def _conv_block(in_channels: int, filters: int) -> nn.Sequential:
    # Batch statistics always (track_running_stats=False): the paper's transductive setting, and
    # no buffers, so the model is a pure function of its parameters under functional_call/vmap.
    # No conv bias: batch norm subtracts each channel's mean, so a bias would cancel out and its
    # true gradient is zero (what float error left of it, Adam's per-coordinate scaling blew up
    # into steps of the size of the learning rate).
    return nn.Sequential(
        nn.Conv2d(in_channels, filters, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(filters, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """The few-shot ConvNet of the paper (after Vinyals et al. 2016): 4 conv blocks, linear head.

    `filters` is 64 for 28×28 Omniglot and 32 for 84×84 Mini-ImageNet, as in the paper.
    """

    def __init__(self, ways: int, channels: int = 1, image_size: int = 28, filters: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(channels, filters),
            _conv_block(filters, filters),
            _conv_block(filters, filters),
            _conv_block(filters, filters),
        )
        side = image_size // 2 // 2 // 2 // 2  # each max-pool halves, rounding down
        if side < 1:
            raise ValueError(f"Conv4 needs images of at least 16×16, got {image_size}")
        self.head = nn.Linear(filters * side * side, ways)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits (n, ways) for images (n, channels, image_size, image_size)."""
        return self.head(torch.flatten(self.features(images), start_dim=1))
