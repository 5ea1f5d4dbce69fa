"""The DQN agent: ``act`` for training and evaluation alike, ``update`` for one gradient step.

Collaborators (networks, optimizer, loss) are built here from the config, the optimizer and loss
only through :mod:`rl.registry`. Replay and environment live outside: the agent sees numpy batches.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rl.config import TrainConfig
from rl.networks import frozen_copy, make_q_network, sync_target, use_channels_last
from rl.registry import make_loss, make_optimizer
from rl.replay import Batch
from rl.schedules import LinearSchedule


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from rl.config import ConfigError
        raise ConfigError("device = 'cuda' is not allowed: no CUDA device is visible; use auto or cpu")
    return torch.device(name)


class DQNAgent:
    def __init__(self, cfg: TrainConfig, obs_shape: tuple[int, ...], num_actions: int,
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.num_actions = num_actions
        self.q: nn.Module = make_q_network(cfg.network, obs_shape, num_actions, cfg.hidden_sizes).to(self.device)
        if cfg.channels_last and len(obs_shape) == 3:
            use_channels_last(self.q)
        self.target = frozen_copy(self.q)
        self.optimizer = make_optimizer(cfg.optimizer, self.q.parameters(),
                                        {**cfg.optimizer_kwargs, "lr": cfg.learning_rate})
        self.loss_fn = make_loss(cfg.loss)
        self.epsilon = LinearSchedule(cfg.epsilon_start, cfg.epsilon_end,
                                      int(cfg.exploration_fraction * cfg.total_steps))
        self.learning_rate = LinearSchedule(cfg.learning_rate, cfg.learning_rate * cfg.lr_end_fraction,
                                            cfg.total_steps)
        self.rng = np.random.default_rng(cfg.seed)
        self.updates = 0  # gradient steps taken
        self.bf16 = cfg.precision == "bf16"

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # --- acting ---------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(obs, a) for a batch obs[N, *obs_shape], one forward pass."""
        x = torch.as_tensor(obs, device=self.device)
        with self._autocast():
            return self.q(x).argmax(1).cpu().numpy()

    def act(self, obs: np.ndarray, epsilon: float) -> np.ndarray:
        """Epsilon-greedy actions int64[N]; the forward pass is skipped when every action is random."""
        n = len(obs)
        explore = self.rng.random(n) < epsilon
        random_actions = self.rng.integers(0, self.num_actions, n)
        if explore.all():
            return random_actions
        return np.where(explore, random_actions, self.greedy(obs))

    # --- learning -------------------------------------------------------------------------
    def set_step(self, step: int) -> float:
        """Apply the learning-rate schedule for agent step ``step``; returns the rate."""
        lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _to_device(self, batch: Batch):
        d = self.device
        return (torch.as_tensor(batch.obs, device=d), torch.as_tensor(batch.action, device=d),
                torch.as_tensor(batch.reward, device=d), torch.as_tensor(batch.discount, device=d),
                torch.as_tensor(batch.next_obs, device=d), torch.as_tensor(batch.weight, device=d))

    def td_target(self, reward: torch.Tensor, discount: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """y = R^(n) + gamma^n (1 - done) Q_target(s', a*); a* from the online net when ``double``."""
        with torch.no_grad(), self._autocast():
            next_q_target = self.target(next_obs).float()                         # [B, A]
            if self.cfg.double:
                best = self.q(next_obs).argmax(1, keepdim=True)                   # a* = argmax_a Q_online(s', a)
            else:
                best = next_q_target.argmax(1, keepdim=True)                      # a* = argmax_a Q_target(s', a)
            next_q = next_q_target.gather(1, best).squeeze(1)                     # [B]
            return reward + discount * next_q                                      # discount = gamma^n (1 - done)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch``. Returns detached tensors (no host sync here)."""
        obs, action, reward, discount, next_obs, weight = self._to_device(batch)
        target = self.td_target(reward, discount, next_obs)
        with self._autocast():
            q_all = self.q(obs).float()                                            # [B, A]
        q_taken = q_all.gather(1, action.unsqueeze(1)).squeeze(1)                  # Q(s, a)
        per_sample = self.loss_fn(q_taken, target, reduction="none")               # [B]
        loss = (weight * per_sample).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            grad_norm = nn.utils.clip_grad_norm_(self.q.parameters(), self.cfg.max_grad_norm)
        else:
            grad_norm = torch.zeros((), device=self.device)
        self.optimizer.step()
        self.updates += 1
        if self.cfg.tau < 1.0:
            sync_target(self.target, self.q, self.cfg.tau)
        return {"td_loss": loss.detach(), "q_values": q_taken.detach().mean(), "grad_norm": grad_norm.detach(),
                "td_error": (target - q_taken).detach()}

    def sync_target(self) -> None:
        sync_target(self.target, self.q, 1.0)

    # --- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.target.load_state_dict(state["target"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state.get("updates", 0))
