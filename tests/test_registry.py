"""The optimizer/loss registry: every entry works, names and aliases resolve, bad input is explained.

Tests parametrize over optimizer_names() and loss_names(), so a new entry is tested automatically
(a new loss also needs its torch reference in REFERENCE, which a test demands).
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from agents.supervised import mlp
from rl.data import builtin, features
from rl.registry import (
    LOSSES,
    OPTIMIZERS,
    RegistryError,
    describe,
    get_loss,
    get_optimizer,
    loss_names,
    make_loss,
    make_optimizer,
    optimizer_kwargs,
    optimizer_names,
)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# --- optimizers ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spirals():
    data = builtin("spirals", 256)
    return features(data.x), torch.as_tensor(data.y)          # float32[256, 2], int64[256]


def fresh_model() -> nn.Module:
    torch.manual_seed(0)
    return mlp(2, 3, [32, 32])


@pytest.mark.parametrize("name", optimizer_names())
def test_every_optimizer_lowers_the_loss_from_the_same_init(name, spirals):
    x, y = spirals
    loss_fn = make_loss("cross_entropy")
    model = fresh_model()
    reference = fresh_model()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)  # the same initial weights for every optimizer
    optimizer = make_optimizer(name, model.parameters())
    with torch.no_grad():
        before = loss_fn(model(x), y).item()
    for _ in range(200):  # full-batch steps: deterministic, so any decrease is the optimizer's doing
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        after = loss_fn(model(x), y).item()
    assert math.isfinite(after) and after < 0.99 * before, (name, before, after)


@pytest.mark.parametrize("name,cls,expected", [
    ("rmsprop_dqn", torch.optim.RMSprop, {"lr": 2.5e-4, "alpha": 0.95, "eps": 0.01, "centered": True}),
    ("nature_rmsprop", torch.optim.RMSprop, {"lr": 2.5e-4, "alpha": 0.95, "eps": 0.01, "centered": True}),
    ("adam_rainbow", torch.optim.Adam, {"lr": 6.25e-5, "eps": 1.5e-4}),
    ("adam_dopamine", torch.optim.Adam, {"lr": 6.25e-5, "eps": 1.5e-4}),
    ("nesterov", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
])
def test_published_settings_are_reachable_by_name(name, cls, expected):
    optimizer = make_optimizer(name, [nn.Parameter(torch.zeros(2))])
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert {k: group[k] for k in expected} == expected


@pytest.mark.parametrize("name", optimizer_names())
def test_overrides_win_over_defaults_and_weight_decay_is_everywhere(name):
    optimizer = make_optimizer(name, [nn.Parameter(torch.zeros(2))], {"lr": 0.123, "weight_decay": 1e-4})
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.123 and group["weight_decay"] == 1e-4
    entry = get_optimizer(name)
    assert all(group[k] == v for k, v in entry.defaults.items() if k not in ("lr", "weight_decay"))


@pytest.mark.parametrize("name", optimizer_names())
def test_fast_implementation_takes_the_same_steps_as_torchs_default(name):
    """make_optimizer picks torch's fused or foreach kernel; the trajectory must match the plain loop."""
    torch.manual_seed(0)
    start = [torch.randn(6, 5), torch.randn(5)]
    fast_params = [nn.Parameter(p.clone()) for p in start]
    plain_params = [nn.Parameter(p.clone()) for p in start]
    fast = make_optimizer(name, fast_params, {"lr": 0.01})
    plain = make_optimizer(name, plain_params, {"lr": 0.01, "foreach": False})
    group = fast.param_groups[0]
    assert group.get("fused") or group.get("foreach"), "no fast kernel chosen"
    for step in range(5):
        grads = [torch.randn_like(p) for p in start]
        for params, optimizer in ((fast_params, fast), (plain_params, plain)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(fast_params, plain_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_defaults_cannot_be_changed_by_a_caller():
    with pytest.raises(TypeError):
        get_optimizer("adam").defaults["lr"] = 1.0
    with pytest.raises(TypeError):
        get_loss("huber").defaults["delta"] = 3.0
    assert optimizer_kwargs("adam") == {"lr": 1e-3}


# --- names and aliases -----------------------------------------------------------------------------

@pytest.mark.parametrize("alias,name", [("nag", "nesterov"), ("mle", "nll"), ("ce", "cross_entropy"),
                                        ("smooth_l1", "huber")])
def test_issue_aliases(alias, name):
    lookup = get_optimizer if name in optimizer_names() else get_loss
    assert lookup(alias).name == name


@pytest.mark.parametrize("entry", [*OPTIMIZERS, *LOSSES], ids=lambda e: e.name)
def test_every_alias_and_spelling_resolves(entry):
    lookup = get_optimizer if entry in OPTIMIZERS else get_loss
    for key in (entry.name, *entry.aliases, entry.name.upper(), entry.name.replace("_", "-")):
        assert lookup(key) is entry


def test_names_and_aliases_are_unique():
    keys = [k for e in OPTIMIZERS for k in (e.name, *e.aliases)]
    assert len(keys) == len(set(keys))
    keys = [k for e in LOSSES for k in (e.name, *e.aliases)]
    assert len(keys) == len(set(keys))


# --- losses --------------------------------------------------------------------------------------

# Hand-made tensors with hand-computed mean losses, and torch's own module as the reference.
VALUE_IN = torch.tensor([[0.5, -1.0], [2.0, 0.0]])          # [B=2, 2]
VALUE_TARGET = torch.tensor([[0.0, 0.0], [0.0, 1.0]])        # differences 0.5, -1, 2, -1
LOGITS = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])    # softmax rows: [1/4, 3/4], [1/2, 1/2]
LABELS = torch.tensor([1, 0])
CE = (-math.log(0.75) - math.log(0.5)) / 2

REFERENCE = {  # name: (input, target, torch module class, options to try, hand-computed mean)
    "mse": (VALUE_IN, VALUE_TARGET, nn.MSELoss, {}, (0.25 + 1 + 4 + 1) / 4),
    "l1": (VALUE_IN, VALUE_TARGET, nn.L1Loss, {}, (0.5 + 1 + 2 + 1) / 4),
    "huber": (VALUE_IN, VALUE_TARGET, nn.HuberLoss, {"delta": 2.0}, (0.125 + 0.5 + 1.5 + 0.5) / 4),
    "cross_entropy": (LOGITS, LABELS, nn.CrossEntropyLoss, {"label_smoothing": 0.2}, CE),
    "nll": (LOGITS.log_softmax(1), LABELS, nn.NLLLoss, {"ignore_index": 1}, CE),
}


def test_every_loss_has_a_reference():
    assert sorted(REFERENCE) == sorted(loss_names())


@pytest.mark.parametrize("name", loss_names())
def test_loss_matches_hand_computed_value(name):
    input, target, _, _, expected = REFERENCE[name]
    assert make_loss(name)(input, target).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", loss_names())
def test_loss_matches_torch_reference(name, reduction):
    input, target, module, options, _ = REFERENCE[name]
    torch.testing.assert_close(make_loss(name)(input, target, reduction=reduction),
                               module(reduction=reduction)(input, target))
    # the entry's option, passed as an override, reaches torch
    torch.testing.assert_close(make_loss(name, options)(input, target, reduction=reduction),
                               module(reduction=reduction, **options)(input, target))


@pytest.mark.parametrize("name", loss_names())
def test_loss_gradients_match_torch_reference(name):
    input, target, module, _, _ = REFERENCE[name]
    a, b = input.clone().requires_grad_(), input.clone().requires_grad_()
    make_loss(name)(a, target).backward()
    module()(b, target).backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_huber_default_delta_is_dqn_error_clipping():
    # delta = 1: the gradient of the loss in the TD error is clipped to [-1, 1] (Mnih et al. 2015)
    error = torch.tensor([-5.0, -0.5, 0.5, 5.0], requires_grad=True)
    make_loss("huber")(error, torch.zeros(4), reduction="sum").backward()
    torch.testing.assert_close(error.grad, torch.tensor([-1.0, -0.5, 0.5, 1.0]))


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("lookup,name,listed", [
    (get_optimizer, "adamm", optimizer_names()), (get_loss, "hinge", loss_names()),
    (make_optimizer, "lion", optimizer_names()), (make_loss, "focal", loss_names()),
])
def test_unknown_names_list_the_valid_choices(lookup, name, listed):
    args = (name, [nn.Parameter(torch.zeros(1))]) if lookup is make_optimizer else (name,)
    with pytest.raises(RegistryError) as err:
        lookup(*args)
    message = str(err.value)
    assert repr(name) in message and all(n in message for n in listed) and "\n" not in message


def test_close_misspelling_is_suggested():
    with pytest.raises(RegistryError, match="did you mean 'adam'"):
        get_optimizer("adamm")


@pytest.mark.parametrize("name,overrides,message", [
    ("adam", {"momentum": 0.9}, "optimizer 'adam' has no option 'momentum'; allowed: lr, betas, eps, weight_decay"),
    ("sgd", {"betas": (0.9, 0.99)}, "optimizer 'sgd' has no option 'betas'; allowed: lr, momentum"),
    ("adam", {"lr": -1.0}, "optimizer 'adam' rejected {'lr': -1.0}: Invalid learning rate"),
    ("momentum", {"momentum": -0.5}, "Invalid momentum value"),
    ("nesterov", {"momentum": 0.0}, "Nesterov momentum requires a momentum"),
    ("adam", {"betas": [0.9]}, "optimizer 'adam' rejected"),
    ("adam", {"lr": "fast"}, "optimizer 'adam' rejected"),
])
def test_bad_optimizer_options_fail_at_configuration_time(name, overrides, message):
    with pytest.raises(RegistryError) as err:
        optimizer_kwargs(name, overrides)  # no parameters needed: checked before any model exists
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RegistryError):
        make_optimizer(name, [nn.Parameter(torch.zeros(1))], overrides)


@pytest.mark.parametrize("name,overrides,message", [
    ("mse", {"delta": 1.0}, "loss 'mse' has no option 'delta'; allowed: none"),
    ("cross_entropy", {"delta": 1.0}, "allowed: label_smoothing"),
    ("nll", {"label_smoothing": 0.1}, "loss 'nll' has no option 'label_smoothing'; allowed: ignore_index"),
    ("cross_entropy", {"label_smoothing": 1.5}, "label_smoothing must be between 0.0 and 1.0"),
    ("huber", {"delta": -1.0}, "loss 'huber' rejected {'delta': -1.0}"),
    ("huber", {"delta": "wide"}, "loss 'huber' rejected"),
])
def test_bad_loss_options_fail_at_construction(name, overrides, message):
    with pytest.raises(RegistryError) as err:
        make_loss(name, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- the DQN learner goes through the registry ---------------------------------------------------

def test_dqn_agent_gets_its_optimizer_and_loss_from_the_registry():
    from agents.build import make_agent
    from rl.config import TrainConfig

    cfg = TrainConfig(env="cartpole", network="mlp", optimizer="nature_rmsprop", learning_rate=1e-3,
                      optimizer_kwargs={"eps": 0.02}, loss="smooth_l1")
    agent = make_agent(cfg, (4,), 2)
    group = agent.optimizer.param_groups[0]
    assert type(agent.optimizer) is torch.optim.RMSprop
    assert (group["lr"], group["eps"], group["alpha"], group["centered"]) == (1e-3, 0.02, 0.95, True)
    assert agent.loss_fn.__name__ == "huber"


# --- listing ---------------------------------------------------------------------------------------

def test_listing_shows_every_name_alias_and_default():
    text = describe()
    for entry in (*OPTIMIZERS, *LOSSES):
        assert entry.name in text and all(alias in text for alias in entry.aliases)
        assert all(f"{k}={v}" in text for k, v in entry.defaults.items())
    assert "lr=0.00025, alpha=0.95, eps=0.01, centered=True" in text
    assert "lr=6.25e-05, eps=0.00015" in text


def test_python_m_rl_registry_prints_the_table():
    proc = subprocess.run([sys.executable, "-m", "rl.registry"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == describe()
