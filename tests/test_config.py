"""rl/config.py and rl/settings.py: one declaration per setting drives flags, TOML, validation, --help and the
README."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from rl.cli import run_cli
from rl.config import TrainConfig, base_config, dumps_toml, resumable_keys, validate_train
from rl.settings import ConfigError, field_specs, from_dict
from scripts import train as train_cli

ROOT = Path(__file__).resolve().parents[1]


def resolve(argv):
    return train_cli.resolve_config(train_cli.build_parser(argv).parse_args(argv))[0]


@pytest.mark.parametrize("argv,key,value", [
    (["--v-min", "-1e1"], "v_min", -10.0),
    (["--v-min", "-7"], "v_min", -7.0),
    (["--v-max", "1e1", "--v-min", "-2.5e-1"], "v_min", -0.25),
])
def test_negative_numbers_are_values_not_flags(argv, key, value):
    assert getattr(resolve(["--preset", "cartpole", *argv]), key) == value


def test_a_negative_value_out_of_range_is_named_by_the_validator(tmp_path, capsys):
    code = run_cli(train_cli.main, ["--preset", "cartpole", "--learning-rate", "-1e-3", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "learning_rate = -0.001" in err[0] and "> 0" in err[0]


def test_config_file_without_preset_applies_the_default_preset(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("seed = 7\n")
    cfg, preset = base_config(None, path)
    breakout = from_dict(TrainConfig, tomllib.loads((ROOT / "presets" / "breakout.toml").read_text()))
    assert preset == "breakout" and cfg == dataclasses.replace(breakout, seed=7)
    assert cfg.eval_every == 250_000 != TrainConfig().eval_every      # the preset's, not the dataclass default


def help_default(argv, flag):
    out = subprocess.run([sys.executable, "-m", "scripts.train", *argv, "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={"COLUMNS": "400", "PATH": ""}).stdout
    line = next(line for line in out.splitlines() if line.strip().startswith(flag))
    return re.search(r"\(([^()]*): ([^()]*)\)\s*$", line).groups()


def test_help_shows_what_the_chosen_preset_runs_with():
    assert help_default([], "--eval-every") == ("breakout preset", "250000")
    assert help_default(["--preset", "cartpole"], "--eval-every") == ("cartpole preset", "5000")


def test_resumable_settings_are_declared_on_the_settings():
    assert "total_steps" in resumable_keys() and "eval_every" in resumable_keys()
    assert "learning_rate" not in resumable_keys() and "seed" not in resumable_keys()


WEIRD = {"plain": "breakout", "newline": "a\nb", "quotes": 'say "hi" \\ back', "key with space": 1,
         "unicode": "é✓", "table": {"eps": 1.5e-4, "odd key": "x\ty"}, "list": [64, 64], "empty": {}}


def test_toml_writer_round_trips_any_string_and_key():
    assert tomllib.loads(dumps_toml(WEIRD)) == WEIRD


@pytest.mark.parametrize("preset", ["breakout", "breakout-100k", "breakout-rainbow", "cartpole", "minatar-breakout"])
def test_every_key_of_every_preset_round_trips(preset):
    cfg, _ = base_config(preset, None)
    data = dataclasses.asdict(cfg)
    assert set(data) == set(field_specs(TrainConfig))
    assert from_dict(TrainConfig, tomllib.loads(dumps_toml(data))) == cfg


def test_double_dqn_without_a_target_is_refused_as_a_no_op():
    cfg = from_dict(TrainConfig, {"env": "cartpole", "network": "mlp", "double": True, "target": "none"})
    with pytest.raises(ConfigError, match="double = true is not allowed with target = 'none'"):
        validate_train(cfg)
    validate_train(dataclasses.replace(cfg, double=False))


def test_readme_settings_table_is_the_declarations():
    from rl.config import settings_table
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- settings-table: begin -->\n")[1].split("<!-- settings-table: end -->")[0]
    assert block == settings_table(), "README's table is stale: paste the output of python -m rl.config"


# --- typed lists: list[int], list[str] from the type hint -------------------------------------------------

def test_list_settings_take_toml_lists_of_their_item_type():
    cfg = resolve(["--preset", "cartpole", "--gym-packages", '["json", "email.mime"]', "--hidden-sizes", "[32]"])
    assert cfg.gym_packages == ["json", "email.mime"] and cfg.hidden_sizes == [32]
    assert from_dict(TrainConfig, {"hidden_sizes": [64.0, 32]}).hidden_sizes == [64, 32]   # whole floats are ints
    assert from_dict(TrainConfig, {"gym_packages": []}).gym_packages == []


@pytest.mark.parametrize("key,value,message", [
    ("gym_packages", "minatar", "use a list of strings such as [\"my_package\"]"),
    ("gym_packages", [1], "use a list of strings"),
    ("gym_packages", ["ok", None], "use a list of strings"),
    ("hidden_sizes", [64, "64"], "use a list of whole numbers such as [64, 64]"),
    ("hidden_sizes", [64, 1.5], "use a list of whole numbers"),
    ("hidden_sizes", [64, True], "use a list of whole numbers"),
    ("hidden_sizes", [64, 0], "every item must be >= 1"),
    ("hidden_sizes", 64, "use a list of whole numbers"),
])
def test_list_settings_refuse_other_items_in_one_line(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        from_dict(TrainConfig, {key: value})
    assert str(caught.value).startswith(f"{key} = {value!r} is not allowed") and "\n" not in str(caught.value)


def test_a_bad_list_on_the_command_line_exits_2(tmp_path, capsys):
    run_dir = tmp_path / "r"
    code = run_cli(train_cli.main, ["--preset", "cartpole", "--gym-packages", "[1, 2]", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gym_packages = [1, 2] is not allowed: use a list of strings" in err[0]
    assert not run_dir.exists()
