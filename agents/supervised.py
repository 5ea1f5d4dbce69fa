"""Supervised training on the registry the DQN learner uses: classification, regression and
behaviour cloning share one trainer, so an optimizer or loss name means the same thing in all.

Regularizers, each where it acts: weight decay is an optimizer option (``optimizer_kwargs``),
label smoothing a loss option (``loss_kwargs``), dropout a model option, gradient clipping a
trainer option (``max_grad_norm``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl import checkpoint as ckpt
from rl.config import ConfigError, TrainConfig, from_dict, setting
from rl.data import builtin_names
from rl.networks import MLPEncoder
from rl.registry import (
    RegistryError,
    get_loss,
    loss_choices,
    make_loss,
    make_optimizer,
    optimizer_choices,
    optimizer_kwargs,
)
from rl.schedules import LinearSchedule


@dataclass
class SupervisedConfig:
    """Supervised training settings. Units: an *epoch* is one pass over the training split, an
    *update* one gradient step on one mini-batch; TensorBoard's x-axis counts updates."""

    # data
    data: str = setting("spirals", f"data set: a built-in ({', '.join(builtin_names())}), an .npz file with "
                                   f"arrays x and y, or a folder of IDX files (MNIST layout)")
    synthetic_samples: int = setting(3000, "examples generated for a built-in data set", low=10)
    val_fraction: float = setting(0.2, "fraction of the examples held out for validation",
                                  low=0.0, high=0.9, low_open=True)
    # model (classify and sweep; bc always uses the teacher's network)
    model: str = setting("mlp", "classifier: mlp, or cnn for images [H, W] or [C, H, W]", choices=("mlp", "cnn"))
    hidden_sizes: list[int] = setting(None, "widths of the fully connected hidden layers", low=1,
                                      factory=lambda: [64, 64])
    dropout: float = setting(0.0, "dropout probability after each hidden layer", low=0.0, high=0.9)
    # learner
    optimizer: str = setting("adam", "optimizer name from rl.registry (rl-supervised --list)",
                             choices=optimizer_choices)
    optimizer_kwargs: dict = setting(None, "optimizer options over its registry defaults, e.g. "
                                           "{lr = 3e-4, weight_decay = 1e-4}", factory=dict)
    loss: str = setting("cross_entropy", "loss name from rl.registry (rl-supervised --list)", choices=loss_choices)
    loss_kwargs: dict = setting(None, "loss options, e.g. {label_smoothing = 0.1}", factory=dict)
    epochs: int = setting(30, "passes over the training split", low=1)
    batch_size: int = setting(64, "examples per gradient update", low=1)
    lr_end_fraction: float = setting(1.0, "final learning rate as a fraction of the initial one "
                                          "(linear decay over all updates; 1 = constant)", low=0.0, high=1.0)
    max_grad_norm: float = setting(0.0, "clip the gradient's global norm to this (0 = off)", low=0.0)
    # run
    seed: int = setting(1, "seed for the initial weights, the split, shuffling and dropout", low=0, high=2**31 - 1)
    device: str = setting("auto", "where the model lives", choices=("auto", "cpu", "cuda"))
    torch_threads: int = setting(1, "torch intra-op threads; small models run fastest on one, and more threads "
                                    "contend with other processes for cores (0 = torch's default)", low=0, high=1024)
    log_every: int = setting(10, "gradient updates between TensorBoard train scalars", low=1)


def validate_supervised(cfg: SupervisedConfig) -> SupervisedConfig:
    """Field checks plus the registry's own checks of the option tables, before any work."""
    cfg = from_dict(SupervisedConfig, dataclasses.asdict(cfg))
    try:
        optimizer_kwargs(cfg.optimizer, cfg.optimizer_kwargs)
        make_loss(cfg.loss, cfg.loss_kwargs)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


# --- models ------------------------------------------------------------------------------------
# Classifiers for classify and sweep; behaviour cloning trains the teacher's own Q-network instead
# (see teacher_network).

def mlp(in_features: int, num_outputs: int, hidden_sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """The Q-networks' MLP encoder (ReLU, dropout) and a linear head: [B, *shape] -> [B, num_outputs]."""
    encoder = MLPEncoder(in_features, hidden_sizes, dropout)
    return nn.Sequential(encoder, nn.Linear(encoder.out_features, num_outputs))


class SmallCNN(nn.Module):
    """Two 3x3 convolution + 2x2 max-pool stages and an MLP head, for small images
    float[B, C, H, W] (or [B, H, W], read as one channel)."""

    def __init__(self, image_shape: Sequence[int], num_classes: int, hidden_sizes: Sequence[int] = (64,),
                 dropout: float = 0.0):
        super().__init__()
        channels, height, width = (1, *image_shape) if len(image_shape) == 2 else image_shape
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = mlp(64 * (height // 4) * (width // 4), num_classes, hidden_sizes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)                     # [B, H, W] -> [B, 1, H, W]
        return self.head(self.body(x))             # [B, 64, H/4, W/4] -> logits [B, classes]


def check_model_fits(model: str, feature_shape: tuple[int, ...], data: str) -> None:
    """ConfigError unless ``model`` can read examples of ``feature_shape``."""
    if model == "cnn" and (len(feature_shape) not in (2, 3) or min(feature_shape[-2:]) < 4):
        raise ConfigError(f"model = 'cnn' is not allowed for data {data!r} with examples of shape "
                          f"{feature_shape}: cnn takes images [H, W] or [C, H, W] of at least 4x4; use mlp")


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics: per feature for the MLP, per channel for the
    CNN (one scale per image plane keeps its spatial structure). They are buffers, so the checkpoint
    carries them and every prediction applies them: uint8 counts 0-16 train as well as the same data
    stored as 0-255. Constant inputs keep std 1."""

    def __init__(self, stat_shape: Sequence[int]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(tuple(stat_shape)))
        self.register_buffer("std", torch.ones(tuple(stat_shape)))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Standardize:
        """Set the statistics from ``x`` [N, *feature_shape], reducing over the axes the stats broadcast on."""
        aligned = (1,) * (x.dim() - self.mean.dim()) + tuple(self.mean.shape)
        dims = [i for i, size in enumerate(aligned) if size == 1]
        x64 = x.double()
        mean = x64.mean(dim=dims, keepdim=True)
        std = x64.std(dim=dims, keepdim=True, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.std.copy_(std.reshape(self.std.shape))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def stat_shape(model: str, feature_shape: Sequence[int]) -> tuple[int, ...]:
    """What :class:`Standardize` keeps: a mean per feature (mlp) or per channel (cnn: [C, 1, 1], or [1, 1]
    for images without a channel axis)."""
    if model == "cnn":
        return (feature_shape[0], 1, 1) if len(feature_shape) == 3 else (1, 1)
    return tuple(feature_shape)


def make_classifier(model: str, feature_shape: Sequence[int], num_classes: int,
                    hidden_sizes: Sequence[int], dropout: float = 0.0,
                    train_x: torch.Tensor | None = None) -> nn.Sequential:
    """[B, *feature_shape] -> logits [B, classes], inputs standardised by the statistics of ``train_x``
    (identity until fitted; a loaded checkpoint restores them)."""
    net = SmallCNN(feature_shape, num_classes, hidden_sizes, dropout) if model == "cnn" else \
        mlp(math.prod(feature_shape), num_classes, hidden_sizes, dropout)
    inputs = Standardize(stat_shape(model, feature_shape))
    if train_x is not None:
        inputs.fit(train_x)
    return nn.Sequential(inputs, net)


# --- the trainer -------------------------------------------------------------------------------

@dataclass
class EpochStats:
    epoch: int
    updates: int              # gradient updates so far
    train_loss: float         # mean over the epoch's mini-batches (training mode: dropout on)
    train_accuracy: float     # nan for regression
    val_loss: float
    val_accuracy: float       # nan for regression
    learning_rate: float      # at the epoch's last update
    grad_norm: float          # mean pre-clipping global norm over the epoch
    seconds: float            # wall time since fit() began


class SupervisedTrainer:
    """Mini-batch training of ``model`` with the registry optimizer and loss ``cfg`` names.

    Targets are int64[N] class labels, or float targets shaped like the model output (regression).
    With class labels, a ``log_probs`` loss (nll) sees log-softmax outputs and a value loss (mse,
    huber, ...) regresses the outputs onto one-hot labels, so every registered loss can train a
    classifier.
    """

    def __init__(self, cfg: SupervisedConfig, model: nn.Module, *, device: torch.device | str = "cpu",
                 logger=None, model_meta: dict[str, Any] | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.optimizer_kwargs)
        self.loss_entry = get_loss(cfg.loss)
        self.loss_fn = make_loss(cfg.loss, cfg.loss_kwargs)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.logger = logger
        self.model_meta = dict(model_meta or {})
        self.updates = 0
        self.epoch = 0

    # --- one step ---------------------------------------------------------------------------
    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.loss_entry.input == "log_probs":
            out = out.log_softmax(1)
        if not y.is_floating_point() and self.loss_entry.target == "value":
            y = F.one_hot(y, out.shape[1]).to(out.dtype)                    # [B] -> [B, C]
        return self.loss_fn(out, y, reduction=reduction)

    def set_lr(self, factor: float) -> float:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.optimizer.param_groups[0]["lr"]

    def update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gradient step on a mini-batch; detached tensors back (no host sync here)."""
        self.model.train()
        out = self.model(x)                                                  # [B, C]
        loss = self.loss(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # clip_grad_norm_ returns the norm before clipping; an infinite bound only measures it
        bound = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), bound)
        self.optimizer.step()
        self.updates += 1
        stats = {"loss": loss.detach(), "grad_norm": grad_norm.detach()}
        if not y.is_floating_point():
            stats["correct"] = (out.argmax(1) == y).sum()
        return stats

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
        """(mean loss, accuracy) over all of (x, y) in evaluation mode; accuracy is nan for regression."""
        self.model.eval()
        total, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for start in range(0, len(x), chunk):
            xb, yb = x[start:start + chunk].to(self.device), y[start:start + chunk].to(self.device)
            out = self.model(xb)
            per_example = out[0].numel() if self.loss_entry.target == "value" else 1  # value losses average
            total += self.loss(out, yb, reduction="sum") / per_example                # over every output
            if not yb.is_floating_point():
                correct += (out.argmax(1) == yb).sum()
        accuracy = correct.item() / len(x) if not y.is_floating_point() else math.nan
        return total.item() / len(x), accuracy

    # --- the loop -----------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
            checkpoint_dir: Path | None = None,
            on_epoch: Callable[[EpochStats], None] | None = None) -> list[EpochStats]:
        """Train ``cfg.epochs`` epochs on (x, y); validate after each. With ``checkpoint_dir``, write
        ``latest.pt`` every epoch and ``best.pt`` whenever validation improves."""
        cfg = self.cfg
        x, y = x.to(self.device), y.to(self.device)
        n = len(x)
        per_epoch = math.ceil(n / cfg.batch_size)
        # the learning-rate factor goes from 1 at the first update to lr_end_fraction at the last
        schedule = LinearSchedule(1.0, cfg.lr_end_fraction, self.updates + cfg.epochs * per_epoch - 1)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        classes = not y.is_floating_point()
        history: list[EpochStats] = []
        best = -math.inf
        started = time.perf_counter()
        zero = torch.zeros((), device=self.device)
        # sums of (loss * examples, correct, grad norm, examples, updates): since the last log, and per epoch
        window = torch.zeros(5, device=self.device)
        for _ in range(cfg.epochs):
            self.epoch += 1
            epoch = torch.zeros(5, device=self.device)
            order = torch.randperm(n, generator=shuffle).to(self.device)
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                lr = self.set_lr(schedule(self.updates))
                step = self.update(x[idx], y[idx])
                size = torch.tensor(float(len(idx)), device=self.device)
                row = torch.stack([step["loss"] * size, step.get("correct", zero).float(), step["grad_norm"], size,
                                   torch.ones((), device=self.device)])
                epoch += row
                window += row
                if self.logger is not None and self.updates % cfg.log_every == 0:
                    self._log_window(window, lr, classes)
            if self.logger is not None and window[4] > 0:   # an epoch's tail, so short runs still get curves
                self._log_window(window, lr, classes)
            val_loss, val_accuracy = self.evaluate(val_x, val_y)
            loss_sum, correct_sum, grad_sum, _, updates = epoch.tolist()
            stats = EpochStats(self.epoch, self.updates, loss_sum / n, correct_sum / n if classes else math.nan,
                               val_loss, val_accuracy, lr, grad_sum / updates, time.perf_counter() - started)
            history.append(stats)
            if self.logger is not None:
                self.logger.scalars({"val/loss": val_loss, "charts/epoch": self.epoch,
                                     **({"val/accuracy": val_accuracy} if classes else {})}, self.updates)
            if checkpoint_dir is not None:
                score = val_accuracy if classes else -val_loss
                self.save(Path(checkpoint_dir), stats, best=score > best)
                best = max(best, score)
            if on_epoch is not None:
                on_epoch(stats)
        if self.logger is not None:
            self.logger.flush()
        return history

    def _log_window(self, window: torch.Tensor, lr: float, classes: bool) -> None:
        """Write the means over the updates since the last write, then start a new window."""
        loss_sum, correct, grad_sum, examples, updates = window.tolist()
        values = {"train/loss": loss_sum / examples, "train/grad_norm": grad_sum / updates, "charts/learning_rate": lr}
        if classes:
            values["train/accuracy"] = correct / examples
        self.logger.scalars(values, self.updates)
        window.zero_()

    # --- checkpoints ----------------------------------------------------------------------
    def payload(self, stats: EpochStats | None = None) -> dict[str, Any]:
        """Plain data and tensors only, so it loads with ``torch.load(weights_only=True)``."""
        meta = {**self.model_meta, "epoch": self.epoch, "updates": self.updates,
                "stats": dataclasses.asdict(stats) if stats is not None else None}
        return {"config": dataclasses.asdict(self.cfg), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "meta": ckpt.encode_meta(meta)}

    def save(self, folder: Path, stats: EpochStats, best: bool) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        payload = self.payload(stats)
        ckpt.save(folder / "latest.pt", payload)
        if best:
            ckpt.save(folder / "best.pt", payload)
        return folder / "latest.pt"


# --- behaviour cloning -------------------------------------------------------------------------

def load_agent_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[TrainConfig, dict]:
    """The config and Q-network weights of an rl-train checkpoint; ConfigError if it is not one."""
    try:
        payload = ckpt.load(path, map_location=device)
    except ckpt.CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    agent = payload.get("agent")
    if "config" not in payload or not isinstance(agent, dict) or "q" not in agent:
        raise ConfigError(f"checkpoint {str(path)!r} is not an agent checkpoint (it needs config and agent.q); "
                          f"pass one written by rl-train or rl-supervised bc")
    return from_dict(TrainConfig, payload["config"]), agent["q"]


def teacher_network(cfg: TrainConfig, obs_shape: Sequence[int], num_actions: int) -> nn.Module:
    """A fresh network of the architecture ``cfg`` describes, built as the DQN agent's own online network
    (agents.build.q_network), so a clone's weights always load where rl-evaluate puts them, whatever
    network options the config holds."""
    from agents.build import q_network

    return q_network(cfg, obs_shape, num_actions)


def record_demonstrations(agent, env, steps: int, epsilon: float) -> dict[str, Any]:
    """Play ``steps`` agent steps (all envs together) with the teacher ``agent``.

    Returns x [steps, *obs_shape] (what it acted on), y int64[steps] (its greedy actions: the
    labels), taken int64[steps] (the actions played) and the returns of the games it finished.
    ``epsilon`` > 0 only perturbs which states are visited (as DART does, Laskey et al. 2017); the
    labels stay the teacher's own choice.
    """
    obs = env.reset()
    xs, labels, played, returns = [], [], [], []
    recorded = 0
    while recorded < steps:
        taken = agent.act(obs, epsilon)                                   # int64[N]
        xs.append(obs)
        labels.append(taken if epsilon == 0 else agent.greedy(obs))
        played.append(taken)
        out = env.step(taken)
        returns += [ret for _, ret, _ in out.finished]
        obs = out.obs
        recorded += env.num_envs
    return {"x": np.concatenate(xs)[:steps], "y": np.concatenate(labels)[:steps].astype(np.int64),
            "taken": np.concatenate(played)[:steps].astype(np.int64), "returns": returns}


def clone_payload(teacher_cfg: TrainConfig, policy: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint that rl-evaluate reads like a DQN one: the policy's logits stand in for Q-values,
    and its argmax is the action. ``policy`` must be the teacher's network (:func:`teacher_network`)."""
    return {"config": dataclasses.asdict(teacher_cfg), "agent": {"q": policy.state_dict()},
            "meta": ckpt.encode_meta(meta)}
