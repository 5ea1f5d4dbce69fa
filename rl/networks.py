"""Q-networks and target-network sync.

``NatureCNN`` takes uint8 frames and scales them inside, so the host keeps uint8 end to end and only
the device sees floats (4x less copying than float32 observations).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn


class NatureCNN(nn.Module):
    """Mnih et al. (2015): three convolutions and a 512-unit layer; input uint8[B, C, 84, 84]."""

    def __init__(self, in_channels: int, num_actions: int):
        super().__init__()
        self.channels_last = False
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
        )
        self.head = nn.Linear(512, num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0                     # [B, C, 84, 84] in [0, 1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.body(x))              # [B, A]


class MLP(nn.Module):
    """ReLU multilayer perceptron for vector observations float[B, D]."""

    def __init__(self, in_features: int, num_outputs: int, hidden_sizes: Sequence[int] = (120, 84),
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1).float())


def make_q_network(kind: str, obs_shape: Sequence[int], num_actions: int,
                   hidden_sizes: Sequence[int] = (120, 84)) -> nn.Module:
    if kind == "nature_cnn":
        return NatureCNN(obs_shape[0], num_actions)
    if kind == "mlp":
        in_features = 1
        for d in obs_shape:
            in_features *= d
        return MLP(in_features, num_actions, hidden_sizes)
    raise ValueError(f"unknown network {kind!r}; choose one of: nature_cnn, mlp")


def use_channels_last(net: nn.Module) -> nn.Module:
    """Store conv weights and activations NHWC, which oneDNN and cuDNN convolve faster."""
    for module in net.modules():
        if hasattr(module, "channels_last"):
            module.channels_last = True
    return net.to(memory_format=torch.channels_last)


def frozen_copy(net: nn.Module) -> nn.Module:
    """A target network: same weights, no gradients, always in eval mode."""
    target = copy.deepcopy(net)
    target.requires_grad_(False)
    target.eval()
    return target


@torch.no_grad()
def sync_target(target: nn.Module, online: nn.Module, tau: float = 1.0) -> None:
    """theta_target <- tau * theta_online + (1 - tau) * theta_target (tau = 1: hard copy)."""
    if tau >= 1.0:
        for t, o in zip(target.parameters(), online.parameters()):
            t.copy_(o)
    else:
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)
