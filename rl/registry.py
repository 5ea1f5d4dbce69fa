"""Optimizers and losses by name: the only place either is built.

Every entry is frozen data (name, aliases, defaults, description). The DQN learner and the
supervised trainers both go through :func:`make_optimizer` and :func:`make_loss`, so a name
means the same thing everywhere. ``python -m rl.registry`` prints the table.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F


class RegistryError(ValueError):
    """A name or keyword the registry does not know; the message lists what it does know."""


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    cls: type[torch.optim.Optimizer]
    defaults: Mapping[str, Any]
    description: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class LossEntry:
    name: str
    fn: Callable[..., torch.Tensor]
    defaults: Mapping[str, Any]
    description: str
    aliases: tuple[str, ...] = ()
    target: str = "value"  # "value": float targets shaped like the input; "class": integer labels


def _opt(name, cls, description, aliases=(), **defaults) -> OptimizerEntry:
    return OptimizerEntry(name, cls, dict(defaults), description, tuple(aliases))


OPTIMIZERS: tuple[OptimizerEntry, ...] = (
    _opt("sgd", torch.optim.SGD, "plain stochastic gradient descent", lr=1e-2),
    _opt("momentum", torch.optim.SGD, "SGD with heavy-ball momentum (Polyak 1964)",
         aliases=("sgd_momentum",), lr=1e-2, momentum=0.9),
    _opt("nesterov", torch.optim.SGD, "SGD with Nesterov accelerated gradient",
         aliases=("nag",), lr=1e-2, momentum=0.9, nesterov=True),
    _opt("adagrad", torch.optim.Adagrad, "per-parameter rates from summed squared gradients (Duchi 2011)",
         lr=1e-2),
    _opt("adadelta", torch.optim.Adadelta, "Adagrad with a decaying window, unit-free steps (Zeiler 2012)",
         lr=1.0, rho=0.9),
    _opt("rmsprop", torch.optim.RMSprop, "running mean of squared gradients (Tieleman & Hinton 2012)",
         lr=1e-3, alpha=0.99, eps=1e-8),
    _opt("rmsprop_dqn", torch.optim.RMSprop, "Nature DQN's centred RMSprop (Mnih et al. 2015)",
         aliases=("nature_rmsprop",), lr=2.5e-4, alpha=0.95, eps=0.01, centered=True),
    _opt("adam", torch.optim.Adam, "adaptive moments (Kingma & Ba 2015)", lr=1e-3),
    _opt("adam_rainbow", torch.optim.Adam, "Rainbow/Dopamine's Adam (Hessel et al. 2018)",
         aliases=("adam_dopamine",), lr=6.25e-5, eps=1.5e-4),
    _opt("adamw", torch.optim.AdamW, "Adam with decoupled weight decay (Loshchilov & Hutter 2019)",
         lr=1e-3, weight_decay=1e-2),
    _opt("nadam", torch.optim.NAdam, "Adam with Nesterov momentum (Dozat 2016)", lr=2e-3),
    _opt("radam", torch.optim.RAdam, "Adam with a rectified warm-up of the variance (Liu 2020)", lr=1e-3),
    _opt("adamax", torch.optim.Adamax, "Adam under the infinity norm (Kingma & Ba 2015)", lr=2e-3),
)


def _huber(input, target, reduction="mean", delta=1.0):
    return F.huber_loss(input, target, reduction=reduction, delta=delta)


def _cross_entropy(input, target, reduction="mean", label_smoothing=0.0):
    return F.cross_entropy(input, target, reduction=reduction, label_smoothing=label_smoothing)


LOSSES: tuple[LossEntry, ...] = (
    LossEntry("mse", F.mse_loss, {}, "mean squared error (Gaussian maximum likelihood)",
              aliases=("l2", "mean_squared_error")),
    LossEntry("l1", F.l1_loss, {}, "mean absolute error", aliases=("mae",)),
    LossEntry("huber", _huber, {"delta": 1.0}, "quadratic within delta, linear beyond (DQN's error clipping)",
              aliases=("smooth_l1",)),
    LossEntry("cross_entropy", _cross_entropy, {"label_smoothing": 0.0},
              "softmax cross-entropy on logits against class labels", aliases=("ce",), target="class"),
    LossEntry("nll", F.nll_loss, {}, "negative log-likelihood of log-probabilities (maximum likelihood)",
              aliases=("mle", "negative_log_likelihood"), target="class"),
)


def _index(entries: Iterable) -> dict[str, Any]:
    table = {}
    for entry in entries:
        for key in (entry.name, *entry.aliases):
            table[key] = entry
    return table


_OPTIMIZER_INDEX = _index(OPTIMIZERS)
_LOSS_INDEX = _index(LOSSES)


def optimizer_names() -> list[str]:
    """Canonical optimizer names, in registry order."""
    return [entry.name for entry in OPTIMIZERS]


def loss_names() -> list[str]:
    """Canonical loss names, in registry order."""
    return [entry.name for entry in LOSSES]


def _lookup(table: dict[str, Any], kind: str, name: str):
    key = str(name).lower().replace("-", "_")
    if key in table:
        return table[key]
    valid = sorted({entry.name for entry in table.values()})
    close = difflib.get_close_matches(key, list(table), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RegistryError(f"unknown {kind} {name!r}{hint}; choose one of: {', '.join(valid)}")


def get_optimizer(name: str) -> OptimizerEntry:
    return _lookup(_OPTIMIZER_INDEX, "optimizer", name)


def get_loss(name: str) -> LossEntry:
    return _lookup(_LOSS_INDEX, "loss", name)


def _accepted(fn: Callable, skip: int) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def optimizer_kwargs(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``name`` merged with ``overrides``; unknown keys fail, listing the valid ones."""
    entry = get_optimizer(name)
    allowed = [k for k in _accepted(entry.cls.__init__, 2) if k not in ("params", "defaults")]
    kwargs = dict(entry.defaults)
    for key, value in (overrides or {}).items():
        if key not in allowed:
            raise RegistryError(
                f"optimizer {entry.name!r} has no option {key!r}; allowed: {', '.join(allowed)}")
        kwargs[key] = value
    return kwargs


def make_optimizer(name: str, params, overrides: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; ``overrides`` (e.g. ``{"lr": 1e-4}``) win over defaults."""
    entry = get_optimizer(name)
    kwargs = optimizer_kwargs(name, overrides)
    try:
        return entry.cls(params, **kwargs)
    except (ValueError, TypeError) as exc:
        raise RegistryError(f"optimizer {entry.name!r} rejected {kwargs}: {exc}") from None


def make_loss(name: str, overrides: Mapping[str, Any] | None = None) -> Callable[..., torch.Tensor]:
    """Return ``loss(input, target, reduction="mean")`` for ``name`` with defaults and overrides bound."""
    entry = get_loss(name)
    allowed = [k for k in _accepted(entry.fn, 2) if k not in ("size_average", "reduce", "reduction", "weight")]
    kwargs = dict(entry.defaults)
    for key, value in (overrides or {}).items():
        if key not in allowed:
            shown = ", ".join(allowed) or "none"
            raise RegistryError(f"loss {entry.name!r} has no option {key!r}; allowed: {shown}")
        kwargs[key] = value

    def loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return entry.fn(input, target, reduction=reduction, **kwargs)

    loss.__name__ = entry.name
    return loss


def describe() -> str:
    """A plain-text table of every optimizer and loss with aliases and defaults."""
    def fmt(d):
        return ", ".join(f"{k}={v}" for k, v in d.items()) or "-"

    lines = ["optimizers:"]
    for e in OPTIMIZERS:
        alias = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
        lines.append(f"  {e.name:<13} {fmt(e.defaults):<45} {e.description}{alias}")
    lines.append("losses:")
    for e in LOSSES:
        alias = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
        lines.append(f"  {e.name:<13} {fmt(e.defaults):<45} {e.description}{alias}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
