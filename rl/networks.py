"""Q-networks (encoder + head) and target-network sync.

Every Q-network maps uint8 frames or float vectors to Q-values [B, A] with ``forward``; a
distributional one also gives logits over its value atoms with ``dist`` [B, A, K]. The encoders scale
uint8 frames inside, so the host keeps uint8 end to end and only the device sees floats.
Options compose: dueling streams, noisy linear layers, C51 atoms, Nature, Impala or MinAtar encoder; the
encoders size their flattened output from the real image, so any [C, H, W] that a network fits works.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

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


def conv_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one side (< 1: the input is too small for it)."""
    return (size + 2 * padding - kernel) // stride + 1


def nature_grid(height: int, width: int) -> tuple[int, int]:
    """The Nature encoder's last feature map size: 7x7 for 84x84 frames."""
    def side(n: int) -> int:
        return conv_size(conv_size(conv_size(n, 8, 4), 4, 2), 3, 1)
    return side(height), side(width)


def impala_grid(height: int, width: int, stages: int = 3) -> tuple[int, int]:
    """The Impala encoder's last feature map size: each stage's padded 3x3/2 max-pool halves a side, rounding up
    (11x11 for 84x84 frames; any image of at least 1x1 fits)."""
    for _ in range(stages):
        height, width = conv_size(height, 3, 2, 1), conv_size(width, 3, 2, 1)
    return height, width


def minatar_grid(height: int, width: int) -> tuple[int, int]:
    """The MinAtar encoder's feature map size: one unpadded 3x3 convolution, 8x8 for MinAtar's 10x10 grid."""
    return conv_size(height, 3), conv_size(width, 3)


class NatureEncoder(nn.Module):
    """Mnih et al. (2015) convolutions; uint8[B, C, H, W] -> float[B, 64 * h * w] (3136 for 84x84 frames)."""

    def __init__(self, in_channels: int, height: int = 84, width: int = 84):
        super().__init__()
        self.channels_last = False
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.out_features = 64 * math.prod(nature_grid(height, width))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0                     # [B, C, H, W] in [0, 1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


class MinAtarEncoder(nn.Module):
    """Young & Tian (2019)'s MinAtar network without its head: one 3x3 convolution with 16 channels, stride 1,
    no padding, and a ReLU; uint8[B, C, H, W] -> float[B, 16 * (H - 2) * (W - 2)] (1024 for 10x10)."""

    def __init__(self, in_channels: int, height: int = 10, width: int = 10):
        super().__init__()
        self.channels_last = False
        self.net = nn.Sequential(nn.Conv2d(in_channels, 16, 3, stride=1), nn.ReLU(), nn.Flatten())
        self.out_features = 16 * math.prod(minatar_grid(height, width))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0                     # MinAtar's 0/1 channels arrive as uint8 0/255
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

    def __init__(self, in_channels: int, height: int = 84, width: int = 84,
                 channels: Sequence[int] = (16, 32, 32)):
        super().__init__()
        self.channels_last = False
        stages, c_in = [], in_channels
        for c in channels:
            stages += [nn.Conv2d(c_in, c, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1), _Residual(c), _Residual(c)]
            c_in = c
        self.net = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())
        self.out_features = c_in * math.prod(impala_grid(height, width, len(channels)))

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

    @staticmethod
    def _stream(stream: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        """A stream whose output layer computes in float32 even under bf16 autocast. Q-values of different
        actions often lie closer together than bf16 resolves at their size (its step is 0.03 between 4 and 8):
        rounded there, they tie, and argmax picks the lowest-numbered of the tied actions."""
        *hidden_layers, output_layer = stream
        for layer in hidden_layers:
            h = layer(h)
        with torch.autocast(h.device.type, enabled=False):
            return output_layer(h.float())

    def _head(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-action outputs float32[B, A, K] (K = 1 for plain Q-values)."""
        h = self.encoder(obs)
        adv = self._stream(self.advantage, h).view(-1, self.num_actions, self.atoms)
        if self.value is None:
            return adv
        value = self._stream(self.value, h).view(-1, 1, self.atoms)
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


# Image encoders by name: (encoder class, the head's hidden width, the encoder's feature map size for an image).
IMAGE_NETWORKS = {"nature_cnn": (NatureEncoder, 512, nature_grid), "impala_cnn": (ImpalaEncoder, 256, impala_grid),
                  "minatar_cnn": (MinAtarEncoder, 128, minatar_grid)}
VECTOR_NETWORKS = ("mlp",)


def networks_fitting(obs_shape: Sequence[int]) -> list[str]:
    """The image networks whose every layer has at least one output pixel for images of ``obs_shape`` [C, H, W]."""
    return [kind for kind, (_, _, grid) in IMAGE_NETWORKS.items() if min(grid(*obs_shape[1:])) >= 1]


def make_q_network(kind: str, obs_shape: Sequence[int], num_actions: int, hidden_sizes: Sequence[int] = (120, 84),
                   **head) -> QNetwork:
    """Build a Q-network. ``kind``: nature_cnn | impala_cnn | minatar_cnn (images [C, H, W]) or mlp (vectors);
    ``head`` takes the QNetwork options (dueling, noisy, noisy_sigma, atoms, v_min, v_max). For the MLP the last of
    ``hidden_sizes`` is the head's hidden layer; for the CNNs it is 512 (Nature), 256 (Impala), 128 (MinAtar)."""
    if kind in IMAGE_NETWORKS:
        encoder, hidden, _ = IMAGE_NETWORKS[kind]
        if kind not in networks_fitting(obs_shape):
            raise ValueError(f"{kind} needs larger images than {tuple(obs_shape)}; these fit: "
                             f"{', '.join(networks_fitting(obs_shape)) or 'none'}")
        return QNetwork(encoder(*obs_shape), num_actions, hidden, **head)
    if kind == "mlp":
        in_features = math.prod(obs_shape)
        sizes = list(hidden_sizes) or [64]
        return QNetwork(MLPEncoder(in_features, sizes[:-1]), num_actions, sizes[-1], **head)
    raise ValueError(f"unknown network {kind!r}; choose one of: {', '.join([*IMAGE_NETWORKS, *VECTOR_NETWORKS])}")


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
    and a single gather reads them (faster on CPU than gathering rows, then columns: benchmarks/kernels.py).
    """
    B, C, H, W = obs.shape
    shift = torch.randint(0, 2 * pad + 1, (B, 2), device=obs.device, generator=generator) - pad
    rows = (torch.arange(H, device=obs.device)[None] + shift[:, :1]).clamp_(0, H - 1)     # [B, H]
    cols = (torch.arange(W, device=obs.device)[None] + shift[:, 1:]).clamp_(0, W - 1)     # [B, W]
    flat = (rows[:, :, None] * W + cols[:, None, :]).view(B, 1, H * W)                     # [B, 1, H*W]
    return obs.reshape(B, C, H * W).gather(2, flat.expand(B, C, H * W)).view(B, C, H, W)
