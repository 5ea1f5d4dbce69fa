"""Optimizers and losses by name: the only place either is built.

Every entry is frozen data (name, aliases, defaults, description). The DQN learner and the
supervised trainers both go through :func:`make_optimizer` and :func:`make_loss`, so a name
means the same thing everywhere. ``python -m rl.registry`` (or ``rl-supervised --list``) prints
the table.

Regularizers are options, not entries: weight decay is an optimizer keyword (``weight_decay``,
every optimizer here takes it), label smoothing a loss keyword of ``cross_entropy``; gradient
clipping and dropout belong to the trainer and the model.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

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
    input: str = "scores"  # "scores": any real outputs (logits, Q-values); "log_probs": log-probabilities


def _opt(name, cls, description, aliases=(), **defaults) -> OptimizerEntry:
    # a read-only view, so a caller cannot change a default for everyone else
    return OptimizerEntry(name, cls, MappingProxyType(dict(defaults)), description, tuple(aliases))


def _loss(name, fn, description, aliases=(), target="value", input="scores", **defaults) -> LossEntry:
    return LossEntry(name, fn, MappingProxyType(dict(defaults)), description, tuple(aliases), target, input)


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
    _loss("mse", F.mse_loss, "mean squared error (Gaussian maximum likelihood)",
          aliases=("l2", "mean_squared_error")),
    _loss("l1", F.l1_loss, "mean absolute error", aliases=("mae",)),
    _loss("huber", _huber, "quadratic within delta, linear beyond (DQN's error clipping)",
          aliases=("smooth_l1",), delta=1.0),
    _loss("cross_entropy", _cross_entropy, "softmax cross-entropy on logits against class labels",
          aliases=("ce",), target="class", label_smoothing=0.0),
    _loss("nll", F.nll_loss, "negative log-likelihood of log-probabilities (maximum likelihood)",
          aliases=("mle", "negative_log_likelihood"), target="class", input="log_probs"),
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


def optimizer_choices() -> tuple[str, ...]:
    """Every spelling :func:`get_optimizer` accepts (names and aliases), for config ``choices``."""
    return tuple(_OPTIMIZER_INDEX)


def loss_choices() -> tuple[str, ...]:
    """Every spelling :func:`get_loss` accepts (names and aliases), for config ``choices``."""
    return tuple(_LOSS_INDEX)


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


def _merge(kind: str, entry, allowed: list[str], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(entry.defaults)
    for key, value in (overrides or {}).items():
        if key not in allowed:
            shown = ", ".join(allowed) or "none"
            raise RegistryError(f"{kind} {entry.name!r} has no option {key!r}; allowed: {shown}")
        kwargs[key] = value
    return kwargs


def _rejected(kind: str, entry, kwargs: Mapping[str, Any], exc: Exception) -> RegistryError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return RegistryError(f"{kind} {entry.name!r} rejected {dict(kwargs)}: {first}")


def _optimizer_options(entry: OptimizerEntry, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    allowed = [k for k in _accepted(entry.cls.__init__, 2) if k not in ("params", "defaults")]
    return _merge("optimizer", entry, allowed, overrides)


def _build_optimizer(entry: OptimizerEntry, params, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    try:
        return entry.cls(params, **kwargs)  # the optimizer's own value checks run here
    except (ValueError, TypeError, RuntimeError, LookupError) as exc:
        raise _rejected("optimizer", entry, kwargs, exc) from None


def optimizer_kwargs(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults of ``name`` merged with ``overrides``, checked: unknown keys fail listing the valid
    ones, and bad values (``lr = -1``) fail here, at configuration time, not mid-run."""
    entry = get_optimizer(name)
    kwargs = _optimizer_options(entry, overrides)
    _build_optimizer(entry, [torch.zeros(1, requires_grad=True)], kwargs)
    return kwargs


def _fastest(entry: OptimizerEntry, params: list, kwargs: dict[str, Any]) -> torch.optim.Optimizer | None:
    """The optimizer on torch's fused kernel where it has one for these parameters, else on the foreach one;
    None where the caller chose (``fused``/``foreach`` in ``kwargs``) or the class has neither.

    On CPU torch defaults to a per-tensor Python loop, several times slower for the Nature CNN than the
    fused kernel with the same update rule (``python -m benchmarks.kernels`` measures it)."""
    if "fused" in kwargs or "foreach" in kwargs:
        return None
    accepted = _accepted(entry.cls.__init__, 2)
    if "fused" in accepted:
        try:
            return entry.cls(params, **kwargs, fused=True)
        except RuntimeError:
            pass  # this device or dtype has no fused kernel
    return entry.cls(params, **kwargs, foreach=True) if "foreach" in accepted else None


def make_optimizer(name: str, params, overrides: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; ``overrides`` (e.g. ``{"lr": 1e-4}``) win over defaults.
    The fastest implementation torch has for the parameters' device is chosen (see :func:`_fastest`)."""
    entry = get_optimizer(name)
    params = list(params)
    kwargs = _optimizer_options(entry, overrides)
    plain = _build_optimizer(entry, params, kwargs)  # bad values are reported as the user wrote them
    return _fastest(entry, params, kwargs) or plain


def _probe(entry: LossEntry) -> tuple[torch.Tensor, torch.Tensor]:
    """A tiny (input, target) pair of the kind ``entry`` expects, to try its options on."""
    scores = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]])           # [B=2, C=3]
    if entry.input == "log_probs":
        scores = scores.log_softmax(1)
    target = torch.tensor([2, 0]) if entry.target == "class" else torch.zeros_like(scores)
    return scores, target


def make_loss(name: str, overrides: Mapping[str, Any] | None = None) -> Callable[..., torch.Tensor]:
    """Return ``loss(input, target, reduction="mean")`` for ``name`` with defaults and overrides bound."""
    entry = get_loss(name)
    allowed = [k for k in _accepted(entry.fn, 2) if k not in ("size_average", "reduce", "reduction", "weight")]
    kwargs = _merge("loss", entry, allowed, overrides)

    def loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return entry.fn(input, target, reduction=reduction, **kwargs)

    try:
        loss(*_probe(entry))  # bad values (label_smoothing = 2) fail now, not at the first update
    except (ValueError, TypeError, RuntimeError, LookupError) as exc:
        raise _rejected("loss", entry, kwargs, exc) from None
    loss.__name__ = entry.name
    return loss


def describe() -> str:
    """A plain-text table of every optimizer and loss: name, defaults, description, aliases."""
    def row(entry, note=""):
        defaults = ", ".join(f"{k}={v}" for k, v in entry.defaults.items()) or "-"
        alias = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        return f"  {entry.name:<13} {defaults:<48} {entry.description}{note}{alias}"

    return "\n".join(["optimizers:", *(row(e) for e in OPTIMIZERS),
                      "losses:", *(row(e, "; targets: class labels" if e.target == "class" else "")
                                   for e in LOSSES)])


if __name__ == "__main__":
    print(describe())
