"""Q-networks (encoder + head) and target-network sync.

Every Q-network maps uint8 frames or float vectors to Q-values [B, A] with ``forward``; a
distributional one also gives logits over its value atoms with ``dist`` [B, A, K]. The encoders scale
uint8 frames inside, so the host keeps uint8 end to end and only the device sees floats.
Options compose: dueling streams, noisy linear layers, C51 atoms, Nature or Impala encoder.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class NoisyLinear(nn.Module):
    """Factorised Gaussian noisy layer (Fortunato et al. 2018): w = mu + sigma * (f(e_out) f(e_in)^T).

    Noise is redrawn by :meth:`reset_noise`; in eval mode the layer uses its mean weights.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5):
        super().__init__()
        self.in_features, self.out_features, self.sigma0 = in_features, out_features, sigma0
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mu ~ U(-1/sqrt(in), 1/sqrt(in)), sigma = sigma0 / sqrt(in), as in the paper."""
        bound = 1 / math.sqrt(self.in_features)
        self.weight_mu.uniform_(-bound, bound)
        self.bias_mu.uniform_(-bound, bound)
        self.weight_sigma.fill_(self.sigma0 * bound)
        self.bias_sigma.fill_(self.sigma0 * bound)

    @staticmethod
    def _scaled(n: int, device) -> torch.Tensor:
        x = torch.randn(n, device=device)
        return x.sign() * x.abs().sqrt()

    @torch.no_grad()
    def reset_noise(self) -> None:
        self.eps_in.copy_(self._scaled(self.in_features, self.eps_in.device))
        self.eps_out.copy_(self._scaled(self.out_features, self.eps_out.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        bias = self.bias_mu + self.bias_sigma * self.eps_out
        return F.linear(x, weight, bias)


class NatureEncoder(nn.Module):
    """Mnih et al. (2015) convolutions; uint8[B, C, 84, 84] -> float[B, 3136]."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.channels_last = False
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.out_features = 64 * 7 * 7

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0                     # [B, C, 84, 84] in [0, 1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaEncoder(nn.Module):
    """Espeholt et al. (2018) residual encoder: 3 stages of conv, max-pool and two residual blocks."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (16, 32, 32)):
        super().__init__()
        self.channels_last = False
        stages, c_in, size = [], in_channels, 84
        for c in channels:
            stages += [nn.Conv2d(c_in, c, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1), _Residual(c), _Residual(c)]
            c_in, size = c, (size + 1) // 2
        self.net = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())
        self.out_features = c_in * size * size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


class MLPEncoder(nn.Module):
    """ReLU layers for vector observations float[B, D]; no layers when ``hidden_sizes`` is empty."""

    def __init__(self, in_features: int, hidden_sizes: Sequence[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1).float())


class QNetwork(nn.Module):
    """encoder -> hidden layer -> Q head, optionally dueling (V + A - mean A), noisy, distributional."""

    def __init__(self, encoder: nn.Module, num_actions: int, hidden: int, *, dueling: bool = False,
                 noisy: bool = False, noisy_sigma: float = 0.5, atoms: int = 1, v_min: float = -10.0,
                 v_max: float = 10.0):
        super().__init__()
        self.encoder = encoder
        self.num_actions, self.atoms, self.dueling = num_actions, atoms, dueling

        def linear(i, o):
            return NoisyLinear(i, o, noisy_sigma) if noisy else nn.Linear(i, o)

        def stream(outputs):
            return nn.Sequential(linear(encoder.out_features, hidden), nn.ReLU(), linear(hidden, outputs))

        self.advantage = stream(num_actions * atoms)
        self.value = stream(atoms) if dueling else None
        self.register_buffer("support", torch.linspace(v_min, v_max, atoms) if atoms > 1 else torch.zeros(1))

    def _head(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-action outputs [B, A, K] (K = 1 for plain Q-values)."""
        h = self.encoder(obs)
        adv = self.advantage(h).view(-1, self.num_actions, self.atoms)
        if self.value is None:
            return adv
        value = self.value(h).view(-1, 1, self.atoms)
        return value + adv - adv.mean(1, keepdim=True)

    def dist(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits over the value atoms, [B, A, K]."""
        return self._head(obs)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self._head(obs)
        if self.atoms == 1:
            return out.squeeze(-1)                                       # [B, A]
        return (out.float().softmax(-1) * self.support).sum(-1)          # E[Z] = sum_k p_k z_k

    def reset_noise(self) -> None:
        for module in self.modules():
            if isinstance(module, NoisyLinear):
                module.reset_noise()

    def head(self) -> list[nn.Module]:
        """The layers after the encoder: the advantage stream and, when dueling, the value stream."""
        return [self.advantage] + ([self.value] if self.value is not None else [])

    def reset_head(self) -> None:
        """Draw the head's layers afresh (their initial distribution); the encoder keeps what it learned."""
        for stream in self.head():
            for module in stream.modules():
                if isinstance(module, (nn.Linear, NoisyLinear)):
                    module.reset_parameters()


def make_q_network(kind: str, obs_shape: Sequence[int], num_actions: int, hidden_sizes: Sequence[int] = (120, 84),
                   **head) -> QNetwork:
    """Build a Q-network. ``kind``: nature_cnn | impala_cnn (frames) or mlp (vectors); ``head`` takes the
    QNetwork options (dueling, noisy, noisy_sigma, atoms, v_min, v_max). For the MLP the last of
    ``hidden_sizes`` is the head's hidden layer; for the CNNs it is 512 (Nature)."""
    if kind == "nature_cnn":
        return QNetwork(NatureEncoder(obs_shape[0]), num_actions, 512, **head)
    if kind == "impala_cnn":
        return QNetwork(ImpalaEncoder(obs_shape[0]), num_actions, 256, **head)
    if kind == "mlp":
        in_features = math.prod(obs_shape)
        sizes = list(hidden_sizes) or [64]
        return QNetwork(MLPEncoder(in_features, sizes[:-1]), num_actions, sizes[-1], **head)
    raise ValueError(f"unknown network {kind!r}; choose one of: nature_cnn, impala_cnn, mlp")


def q_network_for(cfg, obs_shape: Sequence[int], num_actions: int) -> QNetwork:
    """The Q-network a TrainConfig describes; training, evaluation and behaviour cloning all use it."""
    return make_q_network(cfg.network, obs_shape, num_actions, cfg.hidden_sizes, dueling=cfg.dueling,
                          noisy=cfg.noisy, noisy_sigma=cfg.noisy_sigma,
                          atoms=cfg.num_atoms if cfg.distributional else 1, v_min=cfg.v_min, v_max=cfg.v_max)


def use_channels_last(net: nn.Module) -> nn.Module:
    """Store conv weights and activations NHWC, which oneDNN and cuDNN convolve faster."""
    for module in net.modules():
        if hasattr(module, "channels_last"):
            module.channels_last = True
    return net.to(memory_format=torch.channels_last)


def frozen_copy(net: nn.Module) -> nn.Module:
    """A target network: same weights, no gradients."""
    target = copy.deepcopy(net)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def sync_target(target: nn.Module, online: nn.Module, tau: float = 1.0) -> None:
    """theta_target <- tau * theta_online + (1 - tau) * theta_target (tau = 1: hard copy)."""
    if target is online:
        return
    if tau >= 1.0:
        for t, o in zip(target.parameters(), online.parameters()):
            t.copy_(o)
    else:
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


def random_shift(obs: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ's augmentation: shift each image by up to ``pad`` pixels, edges replicated; keeps dtype and shape.

    obs: [B, C, H, W]. Implemented as clamped index arithmetic, so uint8 stays uint8 and no padding copy is
    made: each image's shifted pixel positions become one flat index [B, 1, H*W], shared by its C channels,
    and a single gather reads them (3x faster on CPU than gathering rows, then columns).
    """
    B, C, H, W = obs.shape
    shift = torch.randint(0, 2 * pad + 1, (B, 2), device=obs.device, generator=generator) - pad
    rows = (torch.arange(H, device=obs.device)[None] + shift[:, :1]).clamp_(0, H - 1)     # [B, H]
    cols = (torch.arange(W, device=obs.device)[None] + shift[:, 1:]).clamp_(0, W - 1)     # [B, W]
    flat = (rows[:, :, None] * W + cols[:, None, :]).view(B, 1, H * W)                     # [B, 1, H*W]
    return obs.reshape(B, C, H * W).gather(2, flat.expand(B, C, H * W)).view(B, C, H, W)
