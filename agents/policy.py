"""The network an agent is judged by, apart from its training state: read from a training checkpoint or
from a policy file, and written as a policy file (``rl-export``).

A training checkpoint holds everything a resume needs: online, target and averaged weights, optimizer
moments, counters and RNG states. A *policy file* holds only the weights evaluation plays (the Polyak
average where the run kept one, else the online weights) and the run's config as plain data, which
rebuilds the network and the evaluation env. Both go through :mod:`rl.checkpoint`'s atomic save and its
``weights_only`` load, and :func:`load_policy` reads either, so rl-evaluate plays them alike.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.build import make_agent
from agents.dqn import DQNAgent, weights_played
from rl import checkpoint as ckpt
from rl.config import ConfigError, TrainConfig, from_dict

POLICY_KIND = "policy"          # payload["kind"] of a policy file; training checkpoints have no "kind"


@dataclass(frozen=True)
class Policy:
    """Weights of the network evaluation plays, and the config that rebuilds it (``eval_ema`` is 0 when
    the weights are the online ones, so the rebuilt agent reports what it plays)."""

    cfg: TrainConfig
    weights: dict[str, torch.Tensor]
    meta: dict[str, Any]        # step, preset, which weights, the checkpoint it came from (where known)

    def agent(self, obs_shape: tuple[int, ...], num_actions: int, device: torch.device | str = "cpu") -> DQNAgent:
        """A DQNAgent whose every network holds these weights, so it acts and evaluates with them."""
        agent = make_agent(self.cfg, obs_shape, num_actions, device)
        agent.load_policy_weights(self.weights)
        return agent

    def payload(self) -> dict[str, Any]:
        return {"kind": POLICY_KIND, "config": dataclasses.asdict(self.cfg), "weights": self.weights,
                "meta": ckpt.encode_meta(self.meta)}


def is_policy(payload: dict[str, Any]) -> bool:
    return payload.get("kind") == POLICY_KIND


def policy_from(payload: dict[str, Any], path: Path, online: bool = False) -> Policy:
    """The policy in a loaded checkpoint or policy file: the weight average where the run kept one,
    unless ``online``. Raises CheckpointError for a file that holds no agent, ConfigError for ``online``
    on a policy file that holds the average only."""
    if is_policy(payload):
        cfg = from_dict(TrainConfig, payload["config"])
        if online and cfg.eval_ema > 0:
            raise ConfigError(f"policy file {str(path)!r} holds the weight average (eval_ema {cfg.eval_ema:g}) only; "
                              f"for the online weights export them with rl-export CHECKPOINT OUT.pt --online")
        return Policy(cfg, payload["weights"], ckpt.decode_meta(payload["meta"]))
    agent = payload.get("agent")
    if "config" not in payload or not isinstance(agent, dict) or "q" not in agent:
        raise ckpt.CheckpointError(f"checkpoint {str(path)!r} holds no agent (it needs config and agent.q); pass "
                                   f"one written by rl-train, rl-supervised bc or rl-export")
    cfg = from_dict(TrainConfig, payload["config"])
    if online:
        cfg = dataclasses.replace(cfg, eval_ema=0.0)
    # A checkpoint without an average (a behaviour clone's) plays its q, as its evaluations did.
    weights = agent.get("average", agent["q"]) if cfg.eval_ema > 0 else agent["q"]
    meta = ckpt.decode_meta(payload["meta"]) if "meta" in payload else {}
    return Policy(cfg, weights, {"step": meta.get("step"), "preset": meta.get("preset"),
                                 "weights": weights_played(cfg), "checkpoint": str(path)})


def load_policy(path: Path, device: torch.device | str = "cpu", online: bool = False) -> Policy:
    """:func:`policy_from` the file at ``path``: a training checkpoint or a policy file."""
    return policy_from(ckpt.load(path, map_location=device), Path(path), online)


def export_policy(checkpoint: Path, out: Path, online: bool = False) -> Policy:
    """Write the policy of ``checkpoint`` to ``out`` as a policy file (atomically, its folder created once
    the checkpoint has been read); returns it."""
    policy = load_policy(checkpoint, "cpu", online)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    ckpt.save(out, policy.payload())
    return policy


def is_policy_file(path: Path) -> bool:
    """Whether ``path`` is a readable policy file (anything else, readable or not, is not)."""
    try:
        return is_policy(ckpt.load(path))
    except ckpt.CheckpointError:
        return False


def load_training_checkpoint(path: Path, device: torch.device | str = "cpu", use: str = "be resumed") -> dict[str, Any]:
    """A run's own checkpoint, with what only training keeps (to resume from, or to study its learner); a
    policy file is refused, since it holds no optimizer state, target network, counters or RNG states. The
    refusal says the file "cannot <use>"."""
    payload = ckpt.load(path, map_location=device)
    if is_policy(payload):
        raise ckpt.CheckpointError(f"checkpoint {str(path)!r} is a weights-only policy file (rl-export) and cannot "
                                   f"{use}: it holds no optimizer state, target network, counters or RNG states; "
                                   f"give the run's own checkpoints (RUN/checkpoints/latest.pt)")
    return payload
