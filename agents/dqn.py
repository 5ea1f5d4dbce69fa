"""The DQN agent: ``act`` for training and evaluation alike, ``update`` for one gradient step.

Rainbow's pieces are config switches on this one agent (double, dueling, noisy, distributional,
n-step and prioritized replay through the batch, augmentation, target mode). Its online network,
optimizer and loss come in from agents.build.make_agent (the optimizer and loss only through
:mod:`rl.registry`). Replay and environment live outside: the agent sees numpy batches.

What callers use, so that none reaches into the networks or the RNG: ``act`` / ``greedy`` and
``player(seed)`` (an acting copy for evaluation), ``update`` and ``priorities`` (one TD computation),
``set_step`` and ``steps_done`` (the schedules and the hard target sync), ``policy_state_dict`` /
``load_policy_weights`` (weights for acting copies elsewhere), ``state_dict`` / ``load_state_dict`` and
``exploration_state`` / ``load_exploration_state`` (checkpoints), ``q_values``, ``loss_gradient``,
``add_graph`` and ``weights_finite`` (diagnostics).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from rl.config import ConfigError, TrainConfig
from rl.networks import frozen_copy, random_shift, sync_target
from rl.replay import Batch
from rl.schedules import LinearSchedule


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' is not allowed: no CUDA device is visible; use auto or cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware. Elsewhere (e.g. an AVX2-only CPU) torch emulates it and
    bf16 autocast runs about 10x slower than fp32 (README, Performance)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # torch's own CPU probes (private helpers: a torch without them counts as "not native", so fp32)
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where it is native on ``device``, else ``fp32``; the others as given."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def project_distribution(next_probs: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                         support: torch.Tensor) -> torch.Tensor:
    """C51's categorical projection (Bellemare et al. 2017, Algorithm 1).

    Moves each atom z_j of p(s', a*) to Tz_j = r + discount * z_j, clips it to [v_min, v_max] and splits
    its mass between the two nearest atoms. next_probs: [B, K]; reward, discount: [B]; returns m: [B, K].
    """
    B, K = next_probs.shape
    v_min, v_max = support[0], support[-1]
    dz = (v_max - v_min) / (K - 1)
    tz = (reward[:, None] + discount[:, None] * support[None]).clamp(v_min, v_max)   # [B, K]
    b = (tz - v_min) / dz                                                              # fractional atom index
    lower, upper = b.floor().long(), b.ceil().long()
    # b lands exactly on an atom: lower == upper would drop the mass, so widen to a neighbour
    lower[(upper > 0) & (lower == upper)] -= 1
    upper[(lower < K - 1) & (lower == upper)] += 1
    m = torch.zeros_like(next_probs)
    m.scatter_add_(1, lower, next_probs * (upper.float() - b))
    m.scatter_add_(1, upper, next_probs * (b - lower.float()))
    return m


def weights_played(cfg: TrainConfig) -> str:
    """Which weights evaluations play under ``cfg``, as reports name them."""
    return "online" if cfg.eval_ema == 0 else f"average (eval_ema {cfg.eval_ema:g})"


class EpsilonGreedy:
    """Acting: epsilon-greedy over one network's Q-values, one batched forward pass for all envs, with its
    own exploration RNG. The agent acts through one; evaluations play through another (:meth:`DQNAgent.player`)."""

    def __init__(self, net: nn.Module, num_actions: int, device: torch.device, rng: np.random.Generator, *,
                 bf16: bool = False, noisy: bool = False):
        self.net, self.num_actions, self.device, self.rng = net, num_actions, device, rng
        self.bf16, self.noisy = bf16, noisy

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(obs, a) for a batch obs[N, *obs_shape], one forward pass."""
        x = torch.as_tensor(obs, device=self.device)
        if self.noisy and self.net.training:
            self.net.reset_noise()                                # fresh exploration noise every step
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.net(x).argmax(1).cpu().numpy()

    def act(self, obs: np.ndarray, epsilon: float) -> np.ndarray:
        """Epsilon-greedy actions int64[N]; the forward pass is skipped when every action is random."""
        n = len(obs)
        explore = self.rng.random(n) < epsilon
        random_actions = self.rng.integers(0, self.num_actions, n)
        if explore.all():
            return random_actions
        return np.where(explore, random_actions, self.greedy(obs))


class DQNAgent:
    """The online network ``q`` and its optimizer and loss, built by agents.build.make_agent and passed in,
    and what the agent derives from them: the target network, the weight average evaluations play, the
    schedules, and an epsilon-greedy policy whose exploration RNG starts from ``seed`` (default: cfg.seed)."""

    def __init__(self, cfg: TrainConfig, q: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[..., torch.Tensor], *, num_actions: int, device: torch.device | str = "cpu",
                 seed: int | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.num_actions = num_actions
        self.q = q
        self.target = self.q if cfg.target == "none" else frozen_copy(self.q)
        # The average plays evaluations only; learning never reads it, so keeping one leaves training unchanged.
        self.average: nn.Module | None = frozen_copy(self.q) if cfg.eval_ema > 0 else None
        if cfg.compile:  # in place, so state_dict keys (and checkpoints) are the same as without it
            for net in {id(self.q): self.q, id(self.target): self.target}.values():
                net.encoder.compile()
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.epsilon = LinearSchedule(cfg.epsilon_start, cfg.epsilon_end,
                                      int(cfg.exploration_fraction * cfg.total_steps))
        self.learning_rate = LinearSchedule(cfg.learning_rate, cfg.learning_rate * cfg.lr_end_fraction,
                                            cfg.total_steps)
        self.updates = 0  # gradient steps taken
        self.precision = resolve_precision(cfg.precision, self.device)   # fp32 or bf16, never auto
        self.bf16 = self.precision == "bf16"
        self._policy = self._epsilon_greedy(self.q, np.random.default_rng(cfg.seed if seed is None else seed))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _epsilon_greedy(self, net: nn.Module, rng: np.random.Generator) -> EpsilonGreedy:
        return EpsilonGreedy(net, self.num_actions, self.device, rng, bf16=self.bf16, noisy=self.cfg.noisy)

    # --- acting ---------------------------------------------------------------------------
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(obs, a) for a batch obs[N, *obs_shape], one forward pass."""
        return self._policy.greedy(obs)

    def act(self, obs: np.ndarray, epsilon: float) -> np.ndarray:
        """Epsilon-greedy actions int64[N]; the forward pass is skipped when every action is random."""
        return self._policy.act(obs, epsilon)

    def exploration_state(self) -> dict[str, Any]:
        """The exploration RNG's state, plain data: a checkpoint keeps it so a resumed run acts as if never stopped."""
        return self._policy.rng.bit_generator.state

    def load_exploration_state(self, state: dict[str, Any]) -> None:
        self._policy.rng.bit_generator.state = state

    def eval(self) -> DQNAgent:
        """Evaluation mode: noisy layers use their mean weights."""
        self.q.eval()
        return self

    def evaluation_net(self) -> nn.Module:
        """The network evaluations play: the weight average when the run keeps one (``eval_ema``), else q.
        A single snapshot's greedy policy churns from update to update; the average smooths that out."""
        return self.q if self.average is None else self.average

    @contextlib.contextmanager
    def player(self, seed: int, online: bool = False) -> Iterator[EpsilonGreedy]:
        """An acting copy for evaluation: it plays :meth:`evaluation_net` (the online net if ``online``) in eval
        mode with its own RNG from ``seed``, so evaluating in the middle of training never moves the training's
        exploration stream; the net's train/eval mode is restored on exit."""
        net = self.q if online else self.evaluation_net()
        training = net.training
        net.eval()
        try:
            yield self._epsilon_greedy(net, np.random.default_rng(seed))
        finally:
            net.train(training)

    # --- what callers read and load -------------------------------------------------------
    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> torch.Tensor:
        """Q(obs, .) [N, A] of the online network, for diagnostics (no autocast, no noise reset)."""
        return self.q(torch.as_tensor(obs, device=self.device))

    def add_graph(self, logger, obs: np.ndarray) -> None:
        """Trace the online network on ``obs`` into ``logger`` (rl.logging.Logger.graph)."""
        logger.graph(self.q, torch.as_tensor(obs, device=self.device))

    def weights_finite(self) -> bool:
        """Whether every online weight is finite (a NaN or inf stops training before it is saved)."""
        return all(bool(torch.isfinite(p).all()) for p in self.q.parameters())

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The online network's weights on the host: what this agent acts with, for acting copies elsewhere
        (Ape-X publishes them to its actors)."""
        return {k: v.detach().cpu() for k, v in self.q.state_dict().items()}

    def load_policy_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Make every network of the agent (online, target, average) hold ``weights`` (a policy_state_dict or
        a policy file's weights), so it acts, evaluates and computes priorities with them; the optimizer,
        counters and RNG are left alone."""
        for net in {id(n): n for n in (self.q, self.target, self.average) if n is not None}.values():
            net.load_state_dict(weights)

    # --- learning -------------------------------------------------------------------------
    def set_step(self, step: int) -> float:
        """Apply the learning-rate schedule for agent step ``step``; returns the rate."""
        lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Host array -> device tensor; on CUDA through pinned memory so the copy is asynchronous. A tensor
        (from a replay in device memory) is used where it is."""
        if isinstance(array, torch.Tensor):
            return array.to(self.device, non_blocking=True)
        x = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def _to_device(self, batch: Batch, augment: bool = True):
        obs, next_obs = self._tensor(batch.obs), self._tensor(batch.next_obs)   # uint8 until the network
        if augment and self.cfg.augmentation:
            obs, next_obs = random_shift(obs, self.cfg.aug_pad), random_shift(next_obs, self.cfg.aug_pad)
        return (obs, self._tensor(batch.action), self._tensor(batch.reward), self._tensor(batch.discount),
                next_obs, self._tensor(batch.weight))

    def _next_action(self, next_obs: torch.Tensor, next_q_target: torch.Tensor) -> torch.Tensor:
        """a* = argmax_a Q(s', a): by the online net for Double DQN, else by the target net. [B, 1]"""
        if self.cfg.double and self.target is not self.q:
            return self.q(next_obs).argmax(1, keepdim=True)
        return next_q_target.argmax(1, keepdim=True)

    def td_target(self, reward: torch.Tensor, discount: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """y = R^(n) + gamma^n (1 - done) Q_target(s', a*)."""
        with torch.no_grad(), self._autocast():
            next_q_target = self.target(next_obs).float()                         # [B, A]
            best = self._next_action(next_obs, next_q_target)
            next_q = next_q_target.gather(1, best).squeeze(1)                     # [B]
            return reward + discount * next_q                                      # discount = gamma^n (1 - done)

    def distributional_target(self, reward, discount, next_obs) -> torch.Tensor:
        """m = Proj(R^(n) + gamma^n (1 - done) z) under p_target(s', a*). [B, K]"""
        with torch.no_grad(), self._autocast():
            next_probs = self.target.dist(next_obs).float().softmax(-1)           # [B, A, K]
            next_q_target = (next_probs * self.target.support).sum(-1)            # [B, A]
            best = self._next_action(next_obs, next_q_target)                     # [B, 1]
            p_best = next_probs.gather(1, best[:, :, None].expand(-1, 1, next_probs.shape[-1])).squeeze(1)
            return project_distribution(p_best, reward, discount, self.target.support)

    def _td_terms(self, obs, action, reward, discount, next_obs):
        """Per sample: the loss, Q(s, a), the TD error and the priority prioritized replay gives it
        (|TD error|, or C51's cross-entropy). The update and :meth:`priorities` share it."""
        if self.cfg.distributional:
            target = self.distributional_target(reward, discount, next_obs)       # [B, K]
            with self._autocast():
                logits = self.q.dist(obs).float()                                  # [B, A, K]
            taken = logits[torch.arange(len(action), device=self.device), action]  # [B, K]
            per_sample = self.loss_fn(taken, target, reduction="none")             # cross-entropy to m
            q_taken = (taken.softmax(-1) * self.q.support).sum(-1)
            td_error = (target * self.q.support).sum(-1) - q_taken
            priority = per_sample.detach()
        else:
            target = self.td_target(reward, discount, next_obs)                    # [B]
            with self._autocast():
                q_all = self.q(obs).float()                                        # [B, A]
            q_taken = q_all.gather(1, action.unsqueeze(1)).squeeze(1)              # Q(s, a)
            per_sample = self.loss_fn(q_taken, target, reduction="none")           # [B]
            td_error = (target - q_taken).detach()
            priority = td_error.abs()
        return per_sample, q_taken, td_error, priority

    def _loss(self, batch: Batch):
        """The batch's importance-weighted mean loss (with its graph) and the per-sample terms of _td_terms."""
        obs, action, reward, discount, next_obs, weight = self._to_device(batch)
        if self.cfg.noisy:
            self.q.reset_noise()
            if self.target is not self.q:
                self.target.reset_noise()
        per_sample, q_taken, td_error, priority = self._td_terms(obs, action, reward, discount, next_obs)
        return (weight * per_sample).mean(), q_taken, td_error, priority

    def loss_gradient(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss :meth:`update` would descend on ``batch`` and its gradient over the online weights,
        flattened [P], in this agent's precision, no step taken (nor any .grad written): for diagnostics such
        as comparing two precisions' updates on the same weights."""
        loss = self._loss(batch)[0]
        grads = torch.autograd.grad(loss, [p for p in self.q.parameters() if p.requires_grad])
        return loss.detach(), torch.cat([g.flatten() for g in grads])

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on ``batch``. Returns detached tensors (no host sync here); ``priority`` is the
        per-sample |TD error| (or distributional loss) for prioritized replay."""
        loss, q_taken, td_error, priority = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            grad_norm = nn.utils.clip_grad_norm_(self.q.parameters(), self.cfg.max_grad_norm)
        else:
            grad_norm = torch.zeros((), device=self.device)
        self.optimizer.step()
        self.updates += 1
        if self.cfg.target == "polyak":
            sync_target(self.target, self.q, self.cfg.tau)
        if self.average is not None:
            sync_target(self.average, self.q, self.cfg.eval_ema)
        if self.cfg.reset_every and self.updates % self.cfg.reset_every == 0:
            self.reset_head()
        return {"td_loss": loss.detach(), "q_values": q_taken.detach().mean(), "grad_norm": grad_norm.detach(),
                "td_error": td_error.detach(), "priority": priority}

    @torch.no_grad()
    def priorities(self, batch: Batch) -> np.ndarray:
        """The priorities an update on ``batch`` would give it, from the current networks without updating
        them (no augmentation, no fresh noise): Ape-X's initial priorities, so new data need not enter at
        the maximum."""
        obs, action, reward, discount, next_obs, _ = self._to_device(batch, augment=False)
        return self._td_terms(obs, action, reward, discount, next_obs)[3].float().cpu().numpy()

    def steps_done(self, step: int, next_step: int) -> None:
        """Agent steps ``step`` .. ``next_step`` - 1 are taken and the updates due in them have run. A hard
        target copies the online weights whenever those steps crossed a multiple of target_update (once
        learning has begun); Polyak averaging happens in every update instead."""
        crossed = next_step // self.cfg.target_update > step // self.cfg.target_update
        if self.cfg.target == "hard" and self.updates > 0 and crossed:
            self.sync_target()

    def sync_target(self) -> None:
        sync_target(self.target, self.q, 1.0)

    def reset_head(self) -> None:
        """Periodic reset (Nikishin et al. 2022, "The Primacy Bias in Deep RL"): re-initialise the head
        after the encoder, forget its optimizer moments, and give the target net the same fresh head, so a
        network that overfitted its first experience relearns its values from the whole replay."""
        self.q.reset_head()
        for stream in self.q.head():
            for p in stream.parameters():
                self.optimizer.state.pop(p, None)
        for net in (self.target, self.average):       # averaging the old head into the new one would mix
            if net is not None:                         # two unrelated heads: both start from the fresh one
                for fresh, old in zip(self.q.head(), net.head()):
                    sync_target(old, fresh, 1.0)

    # --- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"q": self.q.state_dict(), "target": self.target.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "updates": self.updates}
        if self.average is not None:
            state["average"] = self.average.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        if self.target is not self.q:
            self.target.load_state_dict(state.get("target", state["q"]))
        if self.average is not None:
            self.average.load_state_dict(state.get("average", state["q"]))
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state.get("updates", 0))
